#!/usr/bin/env bash
# Feature-store benchmark: Greenbelt vs Feast (from PyPI) in the same run, on
# the same Parquet files and the same Redis.
#
#   bash bench/features.sh [online|historical|materialize|all]   # default: all
#
# Steps: build the release example (crates/greenbelt-features/examples/
# feature_bench.rs), create bench/.venv-feast from
# bench/features/requirements-feast.txt when missing or changed, generate the
# data once into bench/out/features/ (reused for a day), run Greenbelt then
# Feast for the part(s) asked for, merge the JSON lines into
# bench/out/features/results.json and rewrite the section between
# <!-- bench:features:begin/end --> of docs/benchmarks.md (full sizes only).
# `online` needs the online stores filled: it runs `materialize` first when
# this data has not been materialized yet.
#
# Knobs (environment):
#   FEATURE_BENCH_ENTITY_ROWS    entity rows of the historical retrieval (default 1000000)
#   FEATURE_BENCH_FEATURE_ROWS   rows over all feature views (default 10000000)
#   FEATURE_BENCH_ENTITIES       distinct entity ids (default 100000)
#   FEATURE_BENCH_ONLINE_ITERS / FEATURE_BENCH_ONLINE_BATCH_ITERS
#                                Greenbelt's measured calls, 1 and 100 entity rows (20000 / 2000)
#   FEAST_BENCH_ONLINE_ITERS / FEAST_BENCH_ONLINE_BATCH_ITERS
#                                Feast's measured calls (2000 / 200)
#   FEATURE_BENCH_HISTORICAL_MEMORY_MB
#                                DataFusion pools to try in turn for the historical retrieval,
#                                until one fits (default "512 1024 2048"; 512 MiB is the engine default)
#   FEATURE_BENCH_MEMORY_LIMIT_MB  DataFusion pool of the materialization (default 512)
#   FEATURE_BENCH_REDIS_URL      Redis for both (default redis://127.0.0.1:6379/15; only the
#                                benchmark's keys are deleted: gbbench:* and Feast's project)
#   FEATURE_BENCH_DOCS           auto (default: rewrite the doc only at full sizes), 1, 0
#   CARGO_TARGET_DIR             where cargo builds (default target/)
#   PYTHON                       interpreter for the venv (default python3.11, then python3)
#
# A smoke run: FEATURE_BENCH_ENTITY_ROWS=20000 FEATURE_BENCH_FEATURE_ROWS=200000 \
#   FEATURE_BENCH_ENTITIES=5000 bash bench/features.sh
set -euo pipefail

part="${1:-all}"
case "$part" in
    online | historical | materialize | all) ;;
    *) echo "usage: bash bench/features.sh [online|historical|materialize|all]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$root/bench/out/features"
venv="$root/bench/.venv-feast"
req="$root/bench/features/requirements-feast.txt"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release/examples/feature_bench"
export FEATURE_BENCH_REDIS_URL="${FEATURE_BENCH_REDIS_URL:-redis://127.0.0.1:6379/15}"

say() { echo "[features.sh] $*" >&2; }

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"

# ---- Greenbelt: the release example ----------------------------------------
say "cargo build --release -p greenbelt-features --example feature_bench"
cargo build --release --quiet -p greenbelt-features --example feature_bench

# ---- Feast venv (reinstalled only when the pins change) --------------------
ensure_venv "$venv" "$req" "$python"
fpy="$venv/bin/python"

"$fpy" - <<'EOF' || { say "Redis at $FEATURE_BENCH_REDIS_URL does not answer"; exit 1; }
import os, redis
redis.Redis.from_url(os.environ["FEATURE_BENCH_REDIS_URL"], socket_timeout=3).ping()
EOF

# ---- data (once; regenerated when the sizes change or after a day) ---------
mkdir -p "$out"
raw="$out/raw.jsonl"
log="$out/run.log"
: >"$raw"
: >"$log"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
status=0

# try_step NAME CMD...: stdout (JSON lines) to raw.jsonl, stderr to run.log;
# returns the command's exit status.
try_step() {
    local name="$1"; shift
    say "$name"
    local tmp load rc=0
    tmp="$(mktemp)"
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    "$@" >"$tmp" 2> >(tee -a "$log" >&2) || rc=$?
    while IFS= read -r line; do
        [[ "$line" == \{* ]] && printf '%s\n' "$line" | "$python" -c \
            'import json,sys; o=json.loads(sys.stdin.read()); o["step"]=sys.argv[1]; o["loadavg_before"]=sys.argv[2]; print(json.dumps(o))' \
            "$name" "$load" >>"$raw"
    done <"$tmp"
    rm -f "$tmp"
    return "$rc"
}

# run_step NAME CMD...: try_step; a failure is recorded as a JSON line, the
# run goes on and exits 1 at the end.
run_step() {
    local name="$1" rc=0
    try_step "$@" || rc=$?
    if [[ $rc != 0 ]]; then
        status=1
        "$python" -c 'import json,sys; print(json.dumps({"bench":"failure","step":sys.argv[1],"exit":int(sys.argv[2])}))' \
            "$name" "$rc" >>"$raw"
        say "step $name failed (exit $rc); see $log"
    fi
}

run_step gen "$bin" gen --dir "$out" \
    --entity-rows "${FEATURE_BENCH_ENTITY_ROWS:-1000000}" \
    --feature-rows "${FEATURE_BENCH_FEATURE_ROWS:-10000000}" \
    --entities "${FEATURE_BENCH_ENTITIES:-100000}"
[[ -f "$out/meta.json" ]] || { say "no data generated"; exit 1; }
generated="$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["generated"])' "$out/meta.json")"

do_materialize() {
    run_step materialize-offline "$bin" materialize-offline --dir "$out"
    run_step materialize-online-redb "$bin" materialize-online --dir "$out" --store redb
    run_step materialize-online-redis "$bin" materialize-online --dir "$out" --store redis
    run_step feast-materialize "$fpy" "$root/bench/features/feast_bench.py" materialize --dir "$out"
    if [[ $status == 0 ]]; then echo "$generated" >"$out/.materialized"; fi
}

parts=()
case "$part" in
    all) parts=(materialize online historical) ;;
    online)
        if [[ "$(cat "$out/.materialized" 2>/dev/null || true)" != "$generated" ]]; then
            say "this data is not in the online stores yet: materializing first"
            parts=(materialize online)
        else
            parts=(online)
        fi
        ;;
    *) parts=("$part") ;;
esac

for p in "${parts[@]}"; do
    case "$p" in
        materialize) do_materialize ;;
        online)
            run_step online-redb "$bin" online --dir "$out" --store redb
            run_step online-redis "$bin" online --dir "$out" --store redis
            run_step feast-online "$fpy" "$root/bench/features/feast_bench.py" online --dir "$out"
            ;;
        historical)
            # The engine's default pool first; a larger one only when it does
            # not fit (each failed attempt is kept in the results).
            ok=0
            for mb in ${FEATURE_BENCH_HISTORICAL_MEMORY_MB:-512 1024 2048}; do
                if try_step historical "$bin" historical --dir "$out" --memory-limit-mb "$mb"; then
                    ok=1
                    break
                fi
            done
            [[ $ok == 1 ]] || run_step historical false
            run_step feast-historical "$fpy" "$root/bench/features/feast_bench.py" historical --dir "$out"
            ;;
    esac
done

# ---- results.json and the doc ----------------------------------------------
knobs=""
for var in $(compgen -e | grep -E '^(FEATURE_BENCH_[A-Z_]+|FEAST_BENCH_[A-Z_]+)$' | grep -v '^FEATURE_BENCH_REDIS_URL$' | sort); do
    knobs+="$var=$(printf '%q' "${!var}") "
done
if [[ "$FEATURE_BENCH_REDIS_URL" != "redis://127.0.0.1:6379/15" ]]; then
    knobs+="FEATURE_BENCH_REDIS_URL=$(printf '%q' "$FEATURE_BENCH_REDIS_URL") "
fi
"$python" "$root/bench/features/report.py" merge \
    --raw "$raw" --results "$out/results.json" --meta "$out/meta.json" \
    --parts "${parts[*]}" --started "$started" --finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --command "${knobs}bash bench/features.sh $part" --root "$root" --feast-python "$fpy"
docs="${FEATURE_BENCH_DOCS:-auto}"
if [[ "$docs" != 0 ]]; then
    "$python" "$root/bench/features/report.py" render \
        --results "$out/results.json" --doc "$root/docs/benchmarks.md" \
        $([[ "$docs" == 1 ]] && echo --force)
fi
exit "$status"
