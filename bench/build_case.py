"""One case of bench/build.sh: run a cargo build in an empty target
directory, then write what it cost and where it went as JSON. Usage:

    python3 bench/build_case.py CASE TARGET_DIR OUT.json -- cargo build ...

Wall and CPU (user + sys of cargo and every compiler it ran) come from this
process; the per-crate durations from cargo's own --timings report
(TARGET_DIR/cargo-timings/cargo-timing.html, its UNIT_DATA table).
"""

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# The feature store's query engine: DataFusion and the Arrow/Parquet crates
# it pins (greenbelt-features, plus parquet for greenbelt-control).
ENGINE_PREFIXES = ("datafusion", "arrow", "parquet", "sqlparser")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def units(target: Path) -> list[dict]:
    html = (target / "cargo-timings" / "cargo-timing.html").read_text()
    start = html.index("const UNIT_DATA = ") + len("const UNIT_DATA = ")
    end = html.index("];", start) + 1
    return json.loads(html[start:end])


def summarise(data: list[dict]) -> dict:
    """Per-crate seconds (a crate's build script and library together), the
    engine's share, and the crates built in more than one version."""
    per_crate: dict[tuple[str, str], float] = {}
    for u in data:
        key = (u["name"], u["version"])
        per_crate[key] = per_crate.get(key, 0.0) + float(u.get("duration") or 0.0)
    total = sum(per_crate.values())
    versions: dict[str, list[tuple[str, float]]] = {}
    for (name, version), secs in per_crate.items():
        versions.setdefault(name, []).append((version, secs))
    duplicated = {
        name: sorted(vs) for name, vs in versions.items() if len(vs) > 1
    }
    # What removing the duplicates could save at most: every copy but the
    # most expensive one of each crate.
    dup_extra = sum(sum(s for _, s in vs) - max(s for _, s in vs) for vs in duplicated.values())
    engine = sum(s for (n, _), s in per_crate.items() if n.startswith(ENGINE_PREFIXES))
    own = sum(s for (n, _), s in per_crate.items() if n == "greenbelt" or n.startswith("greenbelt-"))
    top = sorted(per_crate.items(), key=lambda kv: -kv[1])[:15]
    return {
        "units": len(data),
        "crates": len(per_crate),
        "unit_seconds": round(total, 1),
        "engine_unit_seconds": round(engine, 1),
        "greenbelt_unit_seconds": round(own, 1),
        "duplicated": {n: [[v, round(s, 1)] for v, s in vs] for n, vs in sorted(duplicated.items())},
        "duplicated_extra_unit_seconds": round(dup_extra, 1),
        "slowest": [[f"{n} {v}", round(s, 1)] for (n, v), s in top],
        "per_crate": {f"{n} {v}": round(s, 1) for (n, v), s in sorted(per_crate.items())},
    }


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 5 or args[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    case, target, out, cmd = args[0], Path(args[1]), Path(args[2]), args[4:]
    env = dict(os.environ, CARGO_TARGET_DIR=str(target), CARGO_TERM_COLOR="never")
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=os.environ.get("BUILD_CWD") or None)
    wall = time.monotonic() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(f"bench/build_case.py: {case}: the build failed ({proc.returncode})", file=sys.stderr)
        return proc.returncode
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    result = {
        "case": case,
        "command": " ".join(cmd) + (" (DataFusion with its default features)" if case == "release-datafusion-defaults" else ""),
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "nproc": os.cpu_count(),
        "machine": cpu_model(),
        "rustc": rustc,
        "commit": os.environ.get("BUILD_COMMIT", "?"),
        **summarise(units(target)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench/build_case.py: {case}: {wall / 60:.1f} min wall, {result['cpu_s'] / 60:.1f} min CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
