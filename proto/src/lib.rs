//! tandem-proto will own the interserver wire format: streamed part fetch by hash and node
//! status, as protobuf messages and a gRPC service (`prost`/`tonic`). It carries no business
//! logic. Single-node tandem needs no interserver traffic, so for now it holds only the
//! version that every message of the wire format will carry.

/// Version of the interserver wire format. Fields are only ever added, never renumbered.
pub const WIRE_FORMAT_VERSION: u32 = 1;
