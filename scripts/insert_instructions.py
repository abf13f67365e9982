#!/usr/bin/env python3
"""Counts the instructions one node spends per small buffered insert, under valgrind's callgrind.

The small-insert benchmark's inserts/s swing by a quarter within minutes on a shared 2-core
machine; an instruction count does not. This starts `tandem serve` (one node, embedded
coordinator) under callgrind with instrumentation off, creates the benchmark's table, sends
warm-up inserts, then counts only while `--inserts` more are sent: 10-row TabSeparated inserts
with `async_insert=1, wait_for_async_insert=0`, from `--connections` keep-alive clients. The
busy timeout is set past the run, so no flush falls inside the count: what is counted is the
request path and the log (a flush's cost is spread over thousands of inserts in the benchmark,
and over a few dozen here). Prints the count per insert, and the heap allocations per insert
(calls to the allocator, mimalloc: each costs more than its instructions, as a block freed on the
other core or long ago is a cache miss to hand out again), and leaves callgrind's file for
`callgrind_annotate` (`--keep`).

    scripts/insert_instructions.py [--tandem target/release/tandem] [--inserts 4000]

Needs valgrind (callgrind_control comes with it). The count covers user space only: the kernel's
TCP path and fsyncs are not in it. Compare builds by this count, and by the benchmark in
interleaved runs.
"""

import argparse
import http.client
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

from local_node import SMALL_CREATE, SMALL_TABLE, free_port, send_small_inserts, wait_until_up

# Past any run: no flush inside the count.
BUSY_TIMEOUT_MS = "600000"


def send(port, inserts, connections, first_id):
    """Sends `inserts` inserts (rounded down to a multiple of `connections`) over `connections`
    clients; every one must answer 200."""
    query = urllib.parse.urlencode(
        {
            "query": f"INSERT INTO {SMALL_TABLE} FORMAT TabSeparated",
            "async_insert": "1",
            "wait_for_async_insert": "0",
            "async_insert_busy_timeout_ms": BUSY_TIMEOUT_MS,
        }
    )
    each = inserts // connections

    def next_insert(number, sent):
        return first_id + number * inserts + sent if sent < each else None

    return send_small_inserts(port, query, connections, next_insert, "with wait_for_async_insert=0")


# mimalloc's entry points, as its `GlobalAlloc` calls them. Not Rust's `__rust_alloc` and kin:
# under LTO (the `dist` build) those are inlined into their callers and leave no calls to count.
ALLOCATOR_ENTRIES = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"}


def allocations(text):
    """Calls to the allocator's entry points from outside the allocator, in callgrind's output
    (`fn=` names the caller and `cfn=` a callee, by `(id) name` the first time and by `(id)`
    after; the `calls=` line that follows counts)."""
    names, caller, callee, total = {}, "", None, 0
    for line in text.splitlines():
        if line.startswith(("fn=", "cfn=")):
            found = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if not found:
                continue
            if found.group(2):
                names[found.group(1)] = found.group(2)
            if line.startswith("cfn="):
                callee = names.get(found.group(1))
            else:
                caller = names.get(found.group(1)) or ""
        elif line.startswith("calls=") and callee in ALLOCATOR_ENTRIES and not caller.startswith(("mi_", "_mi_")):
            total += int(line.split()[0].removeprefix("calls="))
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tandem", default=None, help="the binary (default: the release build)")
    parser.add_argument("--inserts", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keep", metavar="FILE", help="keep callgrind's output as FILE")
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    target = os.environ.get("CARGO_TARGET_DIR", pathlib.Path(__file__).resolve().parent.parent / "target")
    tandem = args.tandem or str(pathlib.Path(target) / "release" / "tandem")
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "callgrind.out"
        log = open(pathlib.Path(scratch) / "tandem.log", "w")
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            tandem, "serve", "--http-addr", f"127.0.0.1:{port}", "--data-dir", str(pathlib.Path(scratch) / "data"),
        ]  # fmt: skip
        node = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(port, node, 300, " under valgrind")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/", body=SMALL_CREATE)
            answer = connection.getresponse()
            if answer.status != 200:
                sys.exit(f"CREATE TABLE failed: {answer.status} {answer.read()[:300]!r}")
            send(port, max(args.inserts // 4, args.connections), args.connections, 0)
            subprocess.run(["callgrind_control", "-i", "on", str(node.pid)], check=True, capture_output=True)
            counted = send(port, args.inserts, args.connections, 1_000_000)
            subprocess.run(["callgrind_control", "-i", "off", str(node.pid)], check=True, capture_output=True)
        finally:
            node.terminate()
            node.wait(timeout=120)
        text = out.read_text(errors="replace")
        totals = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)
        if not totals:
            sys.exit(f"no totals in {out}")
        total = int(totals.group(1))
        print(f"{total / counted:,.0f} instructions per insert ({total:,} over {counted} inserts, {args.connections} clients)")
        print(f"{allocations(text) / counted:.1f} heap allocations per insert")
        if args.keep:
            shutil.copy(out, args.keep)


if __name__ == "__main__":
    main()
