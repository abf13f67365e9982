#!/usr/bin/env python3
"""Checks the layout's rules, which the compiler does not:

1. No module cycle inside any crate: a module (a file under src/, or a folder of them) may
   refer to another through `crate::<module>`, and the references must form no circle. The
   crate root (lib.rs, main.rs) declares the modules and may use all of them.
2. The replication engine does not depend on the front end's stack: `tandem-replica` pulls in
   neither DataFusion, the front end nor its format crates, and lists no HTTP crate; the
   identities and the coordinator know nothing of Parquet or Arrow.
3. The production binary depends on nothing it does not serve with: `tandem-node` pulls in
   neither the benchmark, the test harness, nor reqwest directly.

Run from the repository root; exits 1 with what is wrong.
"""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["settings", "ids", "parts", "coordinator", "access", "proto", "replica", "server", "node", "bench", "tests"]
REFERENCE = re.compile(r"\bcrate::(?:\{([^}]*)\}|([a-z_][a-z0-9_]*))")

# crate -> packages it must not depend on (normal dependencies, at any depth)
FORBIDDEN = {
    # The identities and the metadata contract know nothing of Parquet, Arrow or HTTP.
    "tandem-ids": ["arrow", "parquet", "tandem-parts"],
    "tandem-coordinator": ["arrow", "parquet", "tandem-parts"],
    # Access control knows users and privileges, not SQL, data or the front door.
    "tandem-access": ["arrow", "parquet", "tandem-parts", "datafusion", "tandem-replica", "tandem-server"],
    # (lz4_flex is allowed: it is the part format's default codec, Parquet's LZ4_RAW.)
    "tandem-replica": ["datafusion", "tandem-server", "tandem-node", "csv", "flate2"],
    "tandem-server": ["tandem-node", "tandem-bench", "tandem-tests"],
    "tandem-node": ["tandem-bench", "tandem-tests"],
}
# crate -> packages it must not list as direct dependencies
FORBIDDEN_DIRECT = {
    # axum may come in only as tonic's internal gRPC router, never as an HTTP API of the engine.
    "tandem-replica": ["axum", "hyper"],
    "tandem-node": ["reqwest", "axum"],
    "tandem-server": ["reqwest", "tandem-coordinator", "tandem-proto"],
}


def module_of(src: pathlib.Path, path: pathlib.Path) -> str | None:
    first = path.relative_to(src).parts[0]
    name = first[:-3] if first.endswith(".rs") else first
    return None if name in ("lib", "main", "mod") else name


def module_cycles(crate: str) -> list[list[str]]:
    src = ROOT / crate / "src"
    if not src.is_dir():
        return []
    edges: dict[str, set[str]] = {}
    for path in src.rglob("*.rs"):
        module = module_of(src, path)
        if module is None:
            continue
        # Comments (doc links included) name modules without depending on them.
        text = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        targets = edges.setdefault(module, set())
        for group, single in REFERENCE.findall(text):
            names = [single] if single else [n.strip().split("::")[0] for n in group.split(",")]
            for name in names:
                if name and name not in ("self", module):
                    targets.add(name)
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def dependencies(package: str, depth: bool) -> set[str]:
    args = ["cargo", "tree", "--locked", "--offline", "-p", package, "-e", "normal", "--prefix", "none"]
    if not depth:
        args += ["--depth", "1"]
    tree = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if tree.returncode != 0:
        sys.exit(f"cargo tree failed for {package}: {tree.stderr.strip()}")
    out = tree.stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def main() -> int:
    problems = []
    for crate in CRATES:
        for cycle in module_cycles(crate):
            problems.append(f"{crate}: module cycle {' -> '.join(cycle)}")
    for package, banned in FORBIDDEN.items():
        found = dependencies(package, depth=True) & set(banned)
        if found:
            problems.append(f"{package} depends on {', '.join(sorted(found))}")
    for package, banned in FORBIDDEN_DIRECT.items():
        found = (dependencies(package, depth=False) - {package}) & set(banned)
        if found:
            problems.append(f"{package} lists {', '.join(sorted(found))} as a direct dependency")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print("layers: no module cycles; the engine, the server and the binary depend only on what they may")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
