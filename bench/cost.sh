#!/usr/bin/env bash
# Savings, measured: each optimisation Greenbelt has, served off and on by
# one `greenbelt serve`, loaded in turn by `greenbelt bench`, priced by the
# server's cost ledger, and compared with `greenbelt cost compare`.
#
#   bash bench/cost.sh                                   # release build (~20 min clean), then ~2 min of load
#   BENCH_BIN=target/debug/greenbelt BENCH_DURATION=3 bash bench/cost.sh   # a quick check
#
# Pairs (A → B):
#   native engine   forest on ONNX Runtime → the same file on the native engine (1 row a request)
#   batching        logreg without → with dynamic batching (1 row a request, 32 connections)
#   int8            mlp fp32 → int8 (`greenbelt optimize quantize`), both on ONNX Runtime (64 rows a request)
#   feature cache   the quickstart's fraud deployment, entity keys in (features read from the
#                   embedded online store), `[store] online_cache_ttl` "0s" → "60s": two servers
#                   in turn, one user and merchant a request cycling over the newest 2,000 transactions
#
# Writes bench/out/cost/ (each run's `bench --json`, each comparison's
# `cost compare --json`, the server's config) and the section between
# <!-- cost:savings:begin/end --> of docs/cost.md.
#
# Knobs (environment):
#   BENCH_DURATION     seconds of measured load per run (default 10)
#   BENCH_CONCURRENCY  connections of the unbatched pairs (default 8)
#   BENCH_PORT         the server's port (default 18600)
#   BENCH_BIN          a prebuilt greenbelt (default target/release/greenbelt, built unless BENCH_BUILD=0)
#   ORT_DYLIB_PATH     libonnxruntime.so (default: the one in .venv or bench/.venv-mlserver)
#   BENCH_DOCS=0       leave docs/cost.md alone
#   BENCH_NOTE         a sentence written under the table (e.g. what else ran on the machine)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "[cost.sh] $*" >&2; }
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
out="$root/bench/out/cost"
rm -rf "$out"
mkdir -p "$out/repo"

gb="${BENCH_BIN:-$root/target/release/greenbelt}"
if [[ -z "${BENCH_BIN:-}" ]] && [[ "${BENCH_BUILD:-1}" == 1 || ! -x "$gb" ]]; then
    say "cargo build --release -p greenbelt"
    cargo build --release --quiet -p greenbelt
fi
ORT_DYLIB_PATH="$(bench_ort "$root")" || exit 1
export ORT_DYLIB_PATH
duration="${BENCH_DURATION:-10}"
conc="${BENCH_CONCURRENCY:-8}"
port="${BENCH_PORT:-18600}"

# ---- the repository: every variant a model of its own -------------------
model() { # NAME FILE CONFIG
    mkdir -p "$out/repo/$1/1"
    cp "$2" "$out/repo/$1/1/model.onnx"
    printf '# written by bench/cost.sh\n%b' "$3" >"$out/repo/$1/config.toml"
}
model forest_ort fixtures/models/forest/1/model.onnx 'backend = "onnxruntime"\n'
model forest_native fixtures/models/forest/1/model.onnx 'backend = "native"\n'
model logreg_unbatched fixtures/models/logreg/1/model.onnx 'backend = "native"\n'
model logreg_batched fixtures/models/logreg/1/model.onnx \
    'backend = "native"\n[batching]\nmax_batch_size = 32\nmax_queue_delay = "500us"\n'
model mlp_fp32 fixtures/models/mlp/1/model.onnx 'backend = "onnxruntime"\n'
say "quantizing the mlp to int8 (greenbelt optimize quantize)"
"$gb" --log-format text optimize quantize --model-file fixtures/models/mlp/1/model.onnx \
    --output "$out/mlp-int8.onnx" --mode int8 >"$out/quantize.txt" 2>&1 || true
[[ -f "$out/mlp-int8.onnx" ]] || { say "quantize wrote nothing: $(cat "$out/quantize.txt")"; exit 1; }
model mlp_int8 "$out/mlp-int8.onnx" 'backend = "onnxruntime"\n'

cat >"$out/greenbelt.toml" <<EOF
# written by bench/cost.sh
[server]
http_addr = "127.0.0.1:$port"
grpc_addr = ""
[telemetry]
log_requests = false
[repository]
path = "repo"
[cost]
interval = "1s"
# the load generator is on the same machine: answers stay in the zone
egress_class = "zone"
EOF

# ---- the server ---------------------------------------------------------
server=
stop_server() {
    if [[ -n "$server" ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap stop_server EXIT
base="http://127.0.0.1:$port"
start_server() { # DIR CONFIG LOG
    (cd "$1" && GREENBELT_LOG=warn exec "$gb" serve --config "$2" >"$3" 2>&1) &
    server=$!
    for _ in $(seq 1 300); do
        curl -fsS "$base/v2/health/ready" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS "$base/v2/health/ready" >/dev/null || { say "server not ready: $(tail -5 "$3")"; exit 1; }
}
start_server "$out" greenbelt.toml "$out/server.log"

run() { # MODEL ROWS|file CONCURRENCY [LABEL [BENCH ARGS...]]
    local label="${4:-$1}" rows=()
    [[ "$2" == file ]] || rows=(--rows "$2")
    say "bench $label (rows $2, concurrency $3, ${duration} s)"
    "$gb" --log-format text bench --url "$base" --model "$1" "${rows[@]}" "${@:5}" \
        --concurrency "$3" --duration "$duration" --json --label "$label" >"$out/$label.json"
}
compare() { # NAME A B
    "$gb" --log-format text cost compare "$out/$2.json" "$out/$3.json" --json >"$out/compare-$1.json"
    "$gb" --log-format text cost compare "$out/$2.json" "$out/$3.json" | tee "$out/compare-$1.txt" >&2
}
run forest_ort 1 "$conc"
run forest_native 1 "$conc"
compare native forest_ort forest_native
run logreg_unbatched 1 32
run logreg_batched 1 32
compare batching logreg_unbatched logreg_batched
run mlp_fp32 64 "$conc"
run mlp_int8 64 "$conc"
compare int8 mlp_fp32 mlp_int8
curl -fsS "$base/admin/cost" >"$out/ledger.json"
stop_server

# ---- feature cache: the quickstart's project, served twice ----------------
# `greenbelt quickstart` writes the project, materializes its views into the
# embedded online store and trains fraud v1 (promoted to champion).
fraud="$out/fraud"
say "laying out the quickstart's project in $fraud (greenbelt quickstart --traffic 0)"
"$gb" --log-format text quickstart --dir "$fraud" --http-addr "127.0.0.1:$port" --grpc-addr "" \
    --traffic 0 >"$out/quickstart.txt" 2>&1 || { say "quickstart failed: $(tail -5 "$out/quickstart.txt")"; exit 1; }
# One user and merchant a request, over the newest 2,000 transactions (their
# online values are fresh), in the order they happened.
python3 - "$fraud/data/transactions.csv" "$out/fraud-requests.jsonl" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))[-2000:]
with open(sys.argv[2], "w") as f:
    for r in rows:
        f.write(json.dumps({"inputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [r["user_id"]]},
            {"name": "merchant_id", "datatype": "BYTES", "shape": [1], "data": [r["merchant_id"]]},
        ]}) + "\n")
PY
for ttl in 0s 60s; do
    sed -i -E '/^online_cache_ttl = /d; s/^\[store\]$/[store]\nonline_cache_ttl = "'"$ttl"'"/' "$fraud/features.toml"
    # As the first server: no request log, answers priced as egress within the zone.
    GREENBELT__TELEMETRY__LOG_REQUESTS=false GREENBELT__COST__EGRESS_CLASS=zone GREENBELT__COST__INTERVAL=1s \
        start_server "$fraud" greenbelt.toml "$out/server-fraud-cache-$ttl.log"
    run fraud file "$conc" "fraud_cache_$ttl" --input-file "$out/fraud-requests.jsonl"
    stop_server
done
compare feature_cache fraud_cache_0s fraud_cache_60s

# ---- the docs section -----------------------------------------------------
[[ "${BENCH_DOCS:-1}" == 1 ]] || exit 0
profile=release
case "$gb" in */debug/*) profile="debug (unoptimised Rust; ONNX Runtime is its release library)" ;; esac
python3 - "$out" "$root/docs/cost.md" "$duration" "$conc" "$(git rev-parse --short=12 HEAD)" "$profile" "${BENCH_NOTE:-}" <<'PY'
import json, pathlib, platform, subprocess, sys
out, doc, duration, conc, rev, profile, note = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
pairs = [
    ("native", "native engine vs ONNX Runtime", "forest (trees), 1 row a request, %s connections" % conc),
    ("batching", "dynamic batching off → on", "logreg on the native engine, 1 row a request, 32 connections"),
    ("int8", "int8 vs fp32", "mlp on ONNX Runtime, 64 rows a request, %s connections" % conc),
    ("feature_cache", "feature cache off → on", "the quickstart's fraud deployment, entity keys (features from the embedded online store), %s connections" % conc),
]
def money(x):
    return "%.4f" % x if abs(x) >= 0.01 else "%.6f" % x
rows, detail = [], []
prices = None
for key, what, how in pairs:
    c = json.loads((out / f"compare-{key}.json").read_text())
    cmp = c["comparison"]
    prices = cmp["prices"]
    top = [l for l in cmp["lines"] if cmp["saving"] and (l["share_of_saving"] or 0) > 0.05]
    where = ", ".join("%s %.0f%%" % (l["item"], 100 * l["share_of_saving"]) for l in top) or "-"
    cpu = lambda side: sum(l[side] for l in cmp["lines"] if l["item"] in ("compute_cpu", "request_cpu", "overhead_cpu"))
    ca, cb = cpu("before"), cpu("after")
    rows.append("| %s | %s | %.0f → %.0f | $%s → $%s | $%s (%.1f%%) | $%s → $%s (%+.1f%%) | %s |" % (
        what, how, cmp["throughput_before"], cmp["throughput_after"],
        money(cmp["before"]), money(cmp["after"]), money(cmp["saving"]), 100 * cmp["saving_ratio"],
        money(ca), money(cb), 100 * (cb / ca - 1) if ca else 0.0, where))
    detail.append("%s (`bench/out/cost/compare-%s.txt`):\n\n```\n%s```\n" % (what, key, (out / f"compare-{key}.txt").read_text()))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
section = [
    "<!-- cost:savings:begin -->",
    "Measured by `bash bench/cost.sh` (%s s of load per run after a 1 s warm-up; greenbelt %s, %s build; %s, %s CPUs shared with the load generator)." % (
        duration, rev, profile, cpu or platform.machine(), subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()),
    "Prices: %s: $%s per vCPU-hour, $%s per GiB-hour of RAM, $%s per GiB-month of storage, $%s per GiB of egress within the zone (the class the script configures: its load generator is on the same machine)." % (
        prices["source"], prices["cpu_core_hour"], prices["ram_gib_hour"], prices["storage_gib_month"], prices["egress_gib"]["zone"]),
    "",
    "| optimisation | workload | predictions/s A → B | $ per 1M predictions A → B | saving | of it CPU (compute + request + overhead) $/1M A → B | where the saving (or the extra cost) came from |",
    "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    *rows,
    "",
    *([note, ""] if note else []),
    *detail,
    "<!-- cost:savings:end -->",
]
text = doc.read_text()
begin, end = text.index("<!-- cost:savings:begin -->"), text.index("<!-- cost:savings:end -->") + len("<!-- cost:savings:end -->")
doc.write_text(text[:begin] + "\n".join(section) + text[end:])
print("wrote the savings section of", doc, file=sys.stderr)
PY
