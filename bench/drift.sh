#!/usr/bin/env bash
# Drift-compare benchmark: `greenbelt drift compare` vs scipy/numpy vs
# Evidently's DataDriftPreset, in the same run, on the same Parquet files.
#
#   bash bench/drift.sh
#
# Steps: build the release binary (unless BENCH_BIN names one), create
# bench/.venv-drift-bench from bench/drift-requirements.txt (evidently is
# installed on its own: if it cannot be installed or run, the output says
# why and the comparison is with scipy only), generate ROWS rows × 20
# numeric + 5 categorical columns (reference + drifted current) into
# bench/out/drift/ (reused while the generator and size are unchanged), run
# the three tools one after the other under `/usr/bin/time -v`, print the
# table and the checks (greenbelt's KS statistics against scipy's on the same
# columns, and the other statistics), and rewrite the section between
# <!-- bench:drift:begin/end --> of docs/benchmarks.md (full size only).
#
# Knobs (environment):
#   BENCH_BIN          a greenbelt binary to time (default: cargo build --release -p greenbelt)
#   DRIFT_BENCH_ROWS   rows per file (default 1000000)
#   DRIFT_BENCH_DOCS   auto (default: rewrite the doc at 1M rows only), 1, 0
#   DRIFT_BENCH_REPEAT runs of greenbelt and of scipy, the median kept (default 3;
#                      Evidently runs once: it takes minutes)
#   DRIFT_BENCH_EVIDENTLY_TIMEOUT  seconds Evidently may take (default 3600)
#   CARGO_TARGET_DIR   where cargo builds (default target/)
#   PYTHON             interpreter for the venv (default python3.11, then python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[drift.sh] $*" >&2; }
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"

rows="${DRIFT_BENCH_ROWS:-1000000}"
out="$root/bench/out/drift"
venv="$root/bench/.venv-drift-bench"
req="$root/bench/drift-requirements.txt"
mkdir -p "$out"

# ---- the binary --------------------------------------------------------------
if [[ -n "${BENCH_BIN:-}" ]]; then
    bin="$BENCH_BIN"
    kind="binary $BENCH_BIN (given by BENCH_BIN)"
else
    say "cargo build --release -p greenbelt"
    cargo build --release --quiet -p greenbelt
    bin="${CARGO_TARGET_DIR:-$root/target}/release/greenbelt"
    kind="release build"
fi
[[ -x "$bin" ]] || { say "no greenbelt binary at $bin"; exit 1; }

# ---- /usr/bin/time for wall time and peak RSS --------------------------------
if [[ ! -x /usr/bin/time ]]; then
    say "installing GNU time (apt-get install time)"
    apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
fi

# ---- the venv: pinned scipy/numpy/pandas/pyarrow, then evidently on its own --
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
rm -f "$out/ev.skip"
if [[ ! -x "$venv/bin/python" ]]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    say "installing $req"
    grep -v '^evidently' "$req" | grep -v '^#' | grep . >"$out/base-requirements.txt"
    "$vpy" -m pip install --quiet --disable-pip-version-check -r "$out/base-requirements.txt"
    if ! "$vpy" -m pip install --quiet --disable-pip-version-check \
        -c "$out/base-requirements.txt" "$(grep '^evidently' "$req")" >"$out/ev-install.log" 2>&1; then
        say "evidently could not be installed (see $out/ev-install.log)"
    fi
    echo "$want" >"$stamp"
fi
if ! "$vpy" -c 'import evidently' 2>"$out/ev-import.log"; then
    echo "evidently is not importable in $venv: $(tail -1 "$out/ev-import.log")" >"$out/ev.skip"
    say "$(cat "$out/ev.skip"); comparing with scipy only"
fi

# ---- data ----------------------------------------------------------------------
data="$out/data-$rows"
gen_sum="$(sha256sum bench/drift/gen.py | cut -d' ' -f1)"
if [[ "$(cat "$data/.gen.sha256" 2>/dev/null || true)" != "$gen_sum" ]]; then
    say "generating $rows rows × 25 columns into $data"
    rm -rf "$data" && mkdir -p "$data"
    "$vpy" bench/drift/gen.py "$data" "$rows"
    echo "$gen_sum" >"$data/.gen.sha256"
fi
ref="$data/reference.parquet"
cur="$data/current.parquet"

# ---- the runs --------------------------------------------------------------------
# measure NAME CMD...: run CMD $repeat times under /usr/bin/time -v (stdout to
# NAME.N.json) and keep the run with the median wall time as NAME.json /
# NAME.time, so one disturbed run (a build next door) does not decide.
repeat="${DRIFT_BENCH_REPEAT:-3}"
measure() {
    local name="$1" i walls=()
    shift
    for ((i = 1; i <= repeat; i++)); do
        /usr/bin/time -v -o "$out/$name.$i.time" "$@" >"$out/$name.$i.json"
        walls+=("$(awk -F': ' '/Elapsed/ {n = split($2, t, ":"); s = 0; for (k = 1; k <= n; k++) s = s * 60 + t[k]; print s}' "$out/$name.$i.time") $i")
    done
    i="$(printf '%s\n' "${walls[@]}" | sort -n | sed -n "$(((repeat + 1) / 2))p" | cut -d' ' -f2)"
    say "$name: wall times $(printf '%s\n' "${walls[@]}" | sort -n | cut -d' ' -f1 | paste -sd' ') s; keeping the median"
    cp "$out/$name.$i.time" "$out/$name.time"
    cp "$out/$name.$i.json" "$out/$name.json"
}
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "greenbelt drift compare ($repeat runs)"
measure gb "$bin" --log-format text drift compare --reference "$ref" --current "$cur" --json
say "scipy + numpy ($repeat runs)"
measure scipy "$vpy" bench/drift/scipy_bench.py "$ref" "$cur"
rm -f "$out/ev.json"
if [[ ! -f "$out/ev.skip" ]]; then
    say "Evidently DataDriftPreset (one run)"
    ev_timeout="${DRIFT_BENCH_EVIDENTLY_TIMEOUT:-3600}"
    ev_status=0
    timeout "$ev_timeout" /usr/bin/time -v -o "$out/ev.time" "$vpy" bench/drift/evidently_bench.py \
        "$ref" "$cur" >"$out/ev.json" 2>"$out/ev.err" || ev_status=$?
    if [[ "$ev_status" == 124 ]]; then
        echo "evidently did not finish within ${ev_timeout} s (DRIFT_BENCH_EVIDENTLY_TIMEOUT)" >"$out/ev.skip"
    elif [[ "$ev_status" != 0 ]]; then
        echo "evidently failed: $(tail -1 "$out/ev.err")" >"$out/ev.skip"
    fi
    if [[ -f "$out/ev.skip" ]]; then
        rm -f "$out/ev.json"
        say "$(cat "$out/ev.skip"); comparing with scipy only"
    fi
fi

# ---- report ------------------------------------------------------------------------
versions="$("$vpy" -m pip freeze 2>/dev/null | grep -iE '^(numpy|pandas|pyarrow|scipy|evidently)==' | paste -sd' ' | sed 's/ /, /g')"
"$vpy" - "$out/meta.json" "$rows" "$started" "$kind" "$(git rev-parse --short HEAD)" "$versions" "$repeat" <<'PY'
import json, os, sys
path, rows, started, kind, rev, versions, repeat = sys.argv[1:8]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
json.dump({"rows": int(rows), "repeat": int(repeat), "started": started, "bin": kind, "rev": rev, "versions": versions,
           "cpu": cpu, "cores": os.cpu_count(), "mem": f"{int(mem) // 1024 // 1024} GiB RAM"}, open(path, "w"))
PY
docs_flag=()
case "${DRIFT_BENCH_DOCS:-auto}" in
    1) docs_flag=(--docs docs/benchmarks.md) ;;
    auto) [[ "$rows" == 1000000 ]] && docs_flag=(--docs docs/benchmarks.md) ;;
esac
"$vpy" bench/drift/report.py "$out" "${docs_flag[@]}"
