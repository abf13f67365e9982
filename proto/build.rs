fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from Debian's protobuf-compiler (scripts/test.sh installs it).
    tonic_prost_build::configure()
        .bytes(".tandem.v1.PartChunk.data")
        .compile_protos(&["proto/tandem/v1/interserver.proto"], &["proto"])?;
    Ok(())
}
