"""Helpers of the scripts that start a local `tandem serve` and drive it over HTTP."""

import http.client
import socket
import sys
import threading
import time

# The small-insert benchmark's table (bench/src/small_inserts.rs) and its inserts' size.
SMALL_TABLE = "small_bench"
SMALL_CREATE = (
    f"CREATE TABLE {SMALL_TABLE} (ts DateTime, id UInt64, v Float64) ORDER BY (id, ts) PARTITION BY toYYYYMM(ts)"
)
SMALL_ROWS = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port, node, seconds, why=""):
    """Waits until the node `node` (a `subprocess.Popen`) answers `GET /ping` on `port`; exits
    the script if it ends first or does not answer within `seconds` (`why` says why so long)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if node.poll() is not None:
            sys.exit(f"tandem exited with {node.returncode} before answering")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"tandem did not answer /ping within {seconds} s{why}")


def send_small_inserts(port, query, connections, next_insert, what):
    """POSTs 10-row TabSeparated inserts to `/?query` from `connections` keep-alive clients, in
    threads. Client `number` sends insert `next_insert(number, sent)` (its rows' ids are distinct
    from every other insert's) until that gives None; all stop at the first answer other than 200,
    and the script exits naming `what`. Returns how many inserts were sent."""
    sent = [0] * connections
    failures = []

    def client(number):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while not failures:
            insert = next_insert(number, sent[number])
            if insert is None:
                return
            body = "".join(
                f"2024-01-15 10:00:0{r}\t{insert * SMALL_ROWS + r}\t{r}.5\n" for r in range(SMALL_ROWS)
            )
            connection.request("POST", "/?" + query, body=body)
            answer = connection.getresponse()
            text = answer.read()
            if answer.status != 200:
                failures.append(f"{answer.status}: {text[:300]!r}")
            sent[number] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.exit(f"an insert {what} failed: {failures[0]}")
    return sum(sent)
