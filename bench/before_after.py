"""Render bench/out/before-after/{before,after}-N/results.json (written by
bench/before_after.sh) into the "Before/after" section of docs/benchmarks.md.

    python3 bench/before_after.py OUT_DIR ROUNDS BEFORE_LABEL AFTER_LABEL DOC_MD

Each cell is the median over the rounds; every round's value is in
OUT_DIR/*/results.json. Stdlib only.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from report import write_section

BEGIN = "<!-- bench:before-after:begin -->"
END = "<!-- bench:before-after:end -->"
ROWS = [
    ("greenbelt", "rest", "REST, request log on (default)"),
    ("greenbelt-nolog", "rest", "REST, request log off"),
    ("greenbelt", "grpc", "gRPC, request log on"),
]


def cell(runs_by_round, group, protocol, c, key):
    vals = []
    for runs in runs_by_round:
        for r in runs:
            if r["group"] == group and r["protocol"] == protocol and r["concurrency"] == c and r.get("ok"):
                vals.append(r[key])
    return statistics.median(vals) if vals else None


def main() -> int:
    out, rounds, before, after, doc = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5])
    sides = {}
    for side in ("before", "after"):
        sides[side] = [json.loads((out / f"{side}-{n}" / "results.json").read_text())["runs"]
                       for n in range(1, rounds + 1)]
    lines = [
        "## Before/after: the staged request path (issue 11)",
        "",
        f"Command: `bash bench/before_after.sh BEFORE AFTER {before} {after}` — the same bench "
        "(`bench/bench.py`: wrk for REST, `greenbelt bench` for gRPC; closed loop, one row of logreg/1), "
        f"both binaries in one run, alternating ({rounds} rounds each; each cell is the median of the rounds).",
        f"`{before}` is the commit before the restructuring, `{after}` after it (admission before decode, "
        "the auth layer, connection limits, stages).",
        "",
        "| path | c | req/s before | req/s after | change | p99 ms before | p99 ms after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group, protocol, label in ROWS:
        for c in (1, 8, 64):
            b = cell(sides["before"], group, protocol, c, "throughput_rps")
            a = cell(sides["after"], group, protocol, c, "throughput_rps")
            pb = cell(sides["before"], group, protocol, c, "p99_ms")
            pa = cell(sides["after"], group, protocol, c, "p99_ms")
            change = f"{100 * (a - b) / b:+.1f}%" if a and b else "n/a"
            f = lambda x, d: "n/a" if x is None else f"{x:,.{d}f}"  # noqa: E731
            lines.append(f"| {label} | {c} | {f(b, 0)} | {f(a, 0)} | {change} | {f(pb, 3)} | {f(pa, 3)} |")
    write_section(doc, BEGIN, END, "\n".join(lines))
    print(f"wrote {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
