"""Helpers of the scripts that start a local `tandem serve` and drive it over HTTP."""

import http.client
import socket
import sys
import time


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
