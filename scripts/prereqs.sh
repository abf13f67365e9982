#!/usr/bin/env bash
# Installs, on Debian/Ubuntu, the system packages tandem needs that cargo cannot fetch:
#   protoc  - etcd-client and tandem's interserver protocol are generated from .proto files;
#   cc      - zstd (Parquet compression) is C;
#   etcd    - only with --with-etcd: the tests start their own etcd members (and run the
#             README's curl walkthrough, so curl too).
# Does nothing when everything is present.
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if [[ "${1:-}" == "--with-etcd" ]]; then
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
fi
((${#missing[@]})) || exit 0

echo "installing ${missing[*]}" >&2
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
# Keep package services (etcd) from starting: the tests run their own members on free ports.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
fi
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
