#!/usr/bin/env bash
# Overload benchmark: the logreg fixture served twice, once with the
# adaptive concurrency limit ([server.concurrency] gradient2, queue budget)
# and once with only the static limit ([server] max_inflight), side by side
# in one run. For each: capacity closed-loop first, then open-loop load
# (`greenbelt bench --rate`) at 1x and 2x that capacity. Records goodput,
# p50/p99 of admitted requests, shed and failed requests, requests the
# client could not send, the server's peak RSS (VmHWM) and crashes.
#
#   bash bench/overload.sh                         # release build, 60 s per phase
#   OVERLOAD_DURATION=5 bash bench/overload.sh     # smoke run (docs untouched)
#
# Writes bench/out/overload/results.json and, for a full run (or with
# OVERLOAD_DOCS=1), the section between <!-- bench:overload:begin/end -->
# of docs/benchmarks.md.
#
# Knobs (environment):
#   GREENBELT_BIN         use this binary instead of building the release one
#   OVERLOAD_DURATION     seconds of each open-loop phase (default 60)
#   OVERLOAD_CAPACITY_DURATION  seconds of the closed-loop capacity run (default 20)
#   OVERLOAD_CONCURRENCY  closed-loop connections for capacity (default 32)
#   OVERLOAD_OUTSTANDING  open-loop bound on outstanding requests (default 2000)
#   OVERLOAD_SLO_MS       latency SLO of the deployment = request timeout (default 200)
#   OVERLOAD_DOCS         1: write docs/benchmarks.md; 0: never (default: 1 when DURATION >= 60)
#   OVERLOAD_PORT_BASE    first of the ports used (default 18600)
#   ORT_DYLIB_PATH        libonnxruntime.so (default: the one in .venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[overload.sh] $*" >&2; }
out="$root/bench/out/overload"
mkdir -p "$out"
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
python="$(bench_python)"

duration="${OVERLOAD_DURATION:-60}"
cap_duration="${OVERLOAD_CAPACITY_DURATION:-20}"
concurrency="${OVERLOAD_CONCURRENCY:-32}"
outstanding="${OVERLOAD_OUTSTANDING:-2000}"
slo_ms="${OVERLOAD_SLO_MS:-200}"
port="${OVERLOAD_PORT_BASE:-18600}"
docs="${OVERLOAD_DOCS:-}"
if [[ -z "$docs" ]]; then
    if (( ${duration%.*} >= 60 )); then docs=1; else docs=0; fi
fi

ort="${ORT_DYLIB_PATH:-}"
if [[ -z "$ort" ]]; then
    ort="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1 || true)"
fi
[[ -f "$ort" ]] || { say "no libonnxruntime.so found (set ORT_DYLIB_PATH)"; exit 1; }
export ORT_DYLIB_PATH="$ort"

gb="${GREENBELT_BIN:-}"
build="release"
if [[ -z "$gb" ]]; then
    say "cargo build --release -p greenbelt"
    cargo build --release --quiet -p greenbelt
    gb="${CARGO_TARGET_DIR:-$root/target}/release/greenbelt"
else
    build="given binary ($gb)"
fi
[[ -x "$gb" ]] || { say "$gb is not executable"; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/models/logreg/1"
cp fixtures/models/logreg/1/model.onnx "$work/models/logreg/1/model.onnx"

# write_config NAME PORT EXTRA: a server config over the shared repository.
write_config() {
    local name="$1" p="$2" extra="$3"
    cat >"$work/$name.toml" <<TOML
[server]
http_addr = "127.0.0.1:$p"
grpc_addr = ""
max_inflight = 1024
request_timeout_ms = $slo_ms
$extra

[repository]
path = "$work/models"

[telemetry]
log_requests = false
TOML
}
# The static baseline: the in-flight cap only (no per-model limit, no
# queue budget beyond the request timeout).
write_config static "$port" $'queue_budget_ms = '"$slo_ms"$'\n[server.concurrency]\nalgorithm = "off"'
# Adaptive: Gradient2 per model; a request that waited half its budget for
# compute is shed before it runs.
write_config adaptive "$((port + 1))" "queue_budget_ms = $((slo_ms / 2))"$'\n[server.concurrency]\nalgorithm = "gradient2"'

# wait_ready NAME PORT PID: wait until the server is ready.
wait_ready() {
    local name="$1" p="$2" pid="$3" i
    for i in $(seq 1 600); do
        if curl -fsS "http://127.0.0.1:$p/v2/health/ready" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { say "$name server exited at start-up; see $out/$name.log"; exit 1; }
        sleep 0.1
    done
    say "$name server not ready after 60 s"; exit 1
}

# overload_metrics PORT: the server's shed counters and limits, as JSON.
overload_metrics() {
    curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | "$python" -c '
import json, sys
keep = ("greenbelt_shed_total", "greenbelt_overload_shed_total", "greenbelt_concurrency_limit")
print(json.dumps({l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1])
                  for l in sys.stdin if l.startswith(keep)}))' || echo '{}'
}

# bench_json PORT ARGS...: one `greenbelt bench` run as JSON.
bench_json() {
    local p="$1"; shift
    "$gb" bench --url "http://127.0.0.1:$p" --model logreg --json "$@"
}

# hwm_kib PID: the server's peak resident set.
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

results="$out/results.json"
echo '{"runs": []}' >"$results"
add() { # add JSON_FILE: append a run to results.json
    "$python" - "$results" "$1" <<'PY'
import json, sys
res = json.load(open(sys.argv[1])); res["runs"].append(json.load(open(sys.argv[2])))
json.dump(res, open(sys.argv[1], "w"), indent=2)
PY
}

capacity=""
for name in static adaptive; do
    p="$port"; [[ "$name" == adaptive ]] && p="$((port + 1))"
    "$gb" serve --config "$work/$name.toml" >"$out/$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "$name" "$p" "$pid"
    say "$name: server $pid on :$p"
    if [[ -z "$capacity" ]]; then
        say "capacity: closed loop, $concurrency connections, ${cap_duration}s"
        bench_json "$p" --concurrency "$concurrency" --duration "$cap_duration" >"$work/capacity.json"
        capacity="$("$python" -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput_rps"]))' "$work/capacity.json")"
        (( capacity > 0 )) || { say "measured capacity is 0; see $work/capacity.json"; exit 1; }
        say "capacity: $capacity req/s"
    fi
    for mult in 1 2; do
        rate=$((capacity * mult))
        say "$name: open loop at ${mult}x = $rate req/s for ${duration}s"
        crashed=0
        bench_json "$p" --rate "$rate" --concurrency "$outstanding" --duration "$duration" >"$work/run.json" || crashed=1
        kill -0 "$pid" 2>/dev/null || crashed=1
        overload_metrics "$p" >"$work/metrics.json"
        "$python" - "$work/run.json" "$name" "$mult" "$capacity" "$(hwm_kib "$pid")" "$crashed" "$work/metrics.json" >"$work/row.json" <<'PY'
import json, sys
path, name, mult, cap, hwm, crashed, metrics = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception:
    r = {}
r.update(config=name, multiple=int(mult), capacity_rps=float(cap),
         server_hwm_kib=int(hwm or 0), crashed=crashed == "1",
         server_metrics_cumulative=json.load(open(metrics)))
print(json.dumps(r))
PY
        add "$work/row.json"
    done
    # A clean stop: SIGTERM, then the exit status says whether it crashed.
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    "$python" - "$results" "$name" "$status" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
res.setdefault("exits", {})[sys.argv[2]] = int(sys.argv[3])
json.dump(res, open(sys.argv[1], "w"), indent=2)
PY
    pids=("${pids[@]/$pid}")
done

"$python" - "$results" "$duration" "$cap_duration" "$concurrency" "$outstanding" "$slo_ms" "$build" "$(nproc)" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
res["meta"] = dict(duration_s=float(sys.argv[2]), capacity_duration_s=float(sys.argv[3]),
                   concurrency=int(sys.argv[4]), outstanding=int(sys.argv[5]),
                   slo_ms=int(sys.argv[6]), build=sys.argv[7], cpus=int(sys.argv[8]))
json.dump(res, open(sys.argv[1], "w"), indent=2)
PY
"$python" "$root/bench/overload_report.py" "$results" "$root/docs/benchmarks.md" "$docs"
