#!/usr/bin/env bash
# Installs, on Debian/Ubuntu, what tandem needs that cargo cannot fetch:
#   protoc  - etcd-client and tandem's interserver protocol are generated from .proto files;
#   cc      - zstd (Parquet compression) is C;
# and with --for-tests, what the tests start themselves:
#   etcd    - Debian's etcd-server: the tests start their own members on free ports;
#   curl    - the README's walkthrough is run as written;
#   openssl - the TLS tests make their own CA and certificates;
#   moto    - an S3-compatible server (PyPI `moto[s3]`), in a virtualenv at $TANDEM_TEST_VENV
#             (default ~/.cache/tandem-test-venv), for the object-store tests;
#   helm-python-sdk, kubernetes-validate - the Helm library and the Kubernetes API schemas,
#             in the same virtualenv, for the chart check (scripts/check_chart.py);
#   clickhouse-connect, pandas, pyarrow - ClickHouse's Python client, in the same virtualenv,
#             and @clickhouse/client, ClickHouse's Node.js client (npm, into
#             $TANDEM_TEST_NODE_DIR, default ~/.cache/tandem-test-node), with Node.js itself:
#             the client compatibility tests run them unchanged.
# and with --for-bench:
#   python3 - the training run of the benchmark's profile-guided build (scripts/pgo.sh).
# Does nothing when everything is present.
set -euo pipefail

for_tests=false
[[ "${1:-}" == "--for-tests" ]] && for_tests=true
for_bench=false
[[ "${1:-}" == "--for-bench" ]] && for_bench=true
venv="${TANDEM_TEST_VENV:-$HOME/.cache/tandem-test-venv}"
node_dir="${TANDEM_TEST_NODE_DIR:-$HOME/.cache/tandem-test-node}"
# The client versions the compatibility tests were written against.
clickhouse_connect='clickhouse-connect==1.12.0'
node_client='@clickhouse/client@1.23.1'

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if $for_bench; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
if $for_tests; then
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
    if [[ ! -x "$venv/bin/python" ]]; then
        command -v python3 >/dev/null 2>&1 || missing+=(python3)
        python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    fi
fi

if ((${#missing[@]})); then
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
fi

if $for_tests && ! "$venv/bin/python" -c 'import moto.server, flask, flask_cors, helm_python, kubernetes_validate, yaml, clickhouse_connect, pandas, pyarrow' >/dev/null 2>&1; then
    echo "installing moto, helm-python-sdk, kubernetes-validate and clickhouse-connect into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[s3]==5.2.*' flask flask-cors \
        'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' pyyaml \
        "$clickhouse_connect" 'pandas==3.*' 'pyarrow==26.*'
fi

if $for_tests && [[ ! -e "$node_dir/node_modules/@clickhouse/client/package.json" ]]; then
    echo "installing $node_client into $node_dir" >&2
    mkdir -p "$node_dir"
    npm install --silent --no-audit --no-fund --prefix "$node_dir" "$node_client"
fi
