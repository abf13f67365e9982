#!/usr/bin/env python3
"""Runs the training workload of a profile-guided build: drives an instrumented `tandem` the way
users do, then stops it with SIGTERM so that it writes its profile.

An instrumented build (`-Cprofile-generate`) counts how often each branch and call runs, and
writes the counts when the process exits normally; the optimized build (`-Cprofile-use`) then lays
out hot code together, inlines along the hot calls and keeps cold code out of the way. The
workload decides what counts as hot, so it is what users send: many small inserts buffered with
`wait_for_async_insert=0` (the bulk of it, as on the small-insert benchmark's hot path), with
`wait_for_async_insert=1` and synchronous; bulk inserts in the text formats; the dashboard
queries of the ClickHouse comparison; the system tables. One node with the embedded coordinator,
so it needs nothing but the binary (the Docker build runs it too).

    scripts/pgo_train.py <instrumented tandem> [--seconds 30]

The profile goes where the binary was built to write it (`-Cprofile-generate=<dir>`).
"""

import argparse
import http.client
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.parse

from local_node import SMALL_CREATE, SMALL_TABLE, free_port, send_small_inserts, wait_until_up

DASHBOARD_CREATE = "CREATE TABLE q (ts DateTime, host String, id UInt64, v Float64) ORDER BY (host, ts)"
# The ClickHouse comparison's dashboard queries (bench/src/versus.rs), and the system tables.
QUERIES = [
    "SELECT count() FROM q",
    "SELECT host, avg(v) FROM q GROUP BY host ORDER BY host",
    "SELECT toStartOfMinute(ts) AS m, count(), avg(v) FROM q GROUP BY m ORDER BY m",
    "SELECT count(), avg(v), max(v) FROM q WHERE host = 'host-042'",
    "SELECT host, count(), avg(v) FROM q WHERE ts >= '2024-01-01 02:00:00' AND ts < '2024-01-01 08:00:00' "
    "GROUP BY host ORDER BY host",
    "SELECT host, ts, v FROM q ORDER BY v DESC, host, ts LIMIT 10",
    "SELECT count(DISTINCT id) FROM q",
    "SELECT host, toStartOfHour(ts) AS h, avg(v) FROM q WHERE host IN ('host-001', 'host-002', 'host-003') "
    "GROUP BY host, h ORDER BY host, h",
    "SELECT host, quantile(0.9)(v) FROM q GROUP BY host ORDER BY host",
    f"SELECT count(), sum(v) FROM {SMALL_TABLE}",
    "SELECT table, count(), sum(rows) FROM system.parts WHERE active GROUP BY table ORDER BY table",
    "SELECT * FROM system.asynchronous_inserts",
]


def post(port, params, body):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/?" + urllib.parse.urlencode(params), body=body)
    answer = connection.getresponse()
    text = answer.read()
    if answer.status != 200:
        sys.exit(f"{params or body[:80]!r} failed: {answer.status} {text[:300]!r}")
    return text


def small_inserts(port, seconds, connections, settings, run):
    """10-row TSV inserts from `connections` keep-alive clients for `seconds`; each run's rows
    are distinct, so none is a deduplicated no-op."""
    query = urllib.parse.urlencode({"query": f"INSERT INTO {SMALL_TABLE} FORMAT TabSeparated", **settings})
    deadline = time.monotonic() + seconds

    def next_insert(number, sent):
        return (run * connections + number) * 100_000_000 + sent if time.monotonic() < deadline else None

    sent = send_small_inserts(port, query, connections, next_insert, f"with {settings}")
    print(f"{sent} small inserts with {settings or 'async_insert=0'}")


def dashboard_rows(start, end, line):
    """Rows of the dashboard table: 10 a second from 2024-01-01, 200 hosts, spread values."""
    return "".join(
        line(1704067200 + i // 10, f"host-{i % 200:03}", i % 997, i * 2654435761 % 10000 / 100)
        for i in range(start, end)
    )


BULK_FORMATS = [
    ("TabSeparated", lambda ts, host, id, v: f"{ts}\t{host}\t{id}\t{v}\n"),
    ("CSV", lambda ts, host, id, v: f'{ts},"{host}",{id},{v}\n'),
    ("JSONEachRow", lambda ts, host, id, v: f'{{"ts":{ts},"host":"{host}","id":{id},"v":{v}}}\n'),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tandem", help="the instrumented binary")
    parser.add_argument("--seconds", type=int, default=30, help="seconds of buffered small inserts")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log_path = pathlib.Path(scratch) / "tandem.log"
        with open(log_path, "w") as log:
            command = [args.tandem, "serve", "--http-addr", f"127.0.0.1:{port}", "--data-dir", f"{scratch}/data"]
            node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(port, node, 120)
            post(port, {}, SMALL_CREATE)
            small_inserts(port, args.seconds, 32, {"async_insert": "1", "wait_for_async_insert": "0"}, 0)
            small_inserts(port, max(args.seconds // 6, 1), 64, {"async_insert": "1", "wait_for_async_insert": "1"}, 1)
            small_inserts(port, max(args.seconds // 6, 1), 8, {}, 2)
            post(port, {}, DASHBOARD_CREATE)
            batch = 50_000
            for b in range(18):
                name, line = BULK_FORMATS[b % len(BULK_FORMATS)]
                post(port, {"query": f"INSERT INTO q FORMAT {name}"}, dashboard_rows(b * batch, (b + 1) * batch, line))
            for _ in range(5):
                for sql in QUERIES:
                    post(port, {}, sql)
            print(f"{len(QUERIES) * 5} queries")
        finally:
            node.terminate()
            code = node.wait(timeout=120)
        if code != 0:
            tail = log_path.read_text()[-2000:]
            sys.exit(f"tandem exited with {code} on SIGTERM, so its profile may be missing: {tail}")


if __name__ == "__main__":
    main()
