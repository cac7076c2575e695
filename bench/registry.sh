#!/usr/bin/env bash
# Registry and promotion timings on the fraud demo, with the release binary:
# pipeline wall time (v1 and v2), the server's alias switch (cold load + warm-up,
# and a rollback to the warm previous version), CLI rollback time, and how long
# until clients see the rolled-back version.
#
#   bash bench/registry.sh            # prints a JSON object; bench/out/registry.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${GREENBELT_BIN:-target/release/greenbelt}
[[ -x $bin ]] || cargo build --release -p greenbelt
if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
    ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1 || true)
    export ORT_DYLIB_PATH
fi
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p bench/out
port=${BENCH_PORT:-18300}
now_ms() { date +%s%3N; }

cd "$work"
# Quickstart lays out the project and runs the pipeline once (v1).
t0=$(now_ms)
"$OLDPWD/$bin" --log-format json quickstart --http-addr 127.0.0.1:$port --grpc-addr "" --traffic 0 > quickstart.log 2>&1
quickstart_ms=$(( $(now_ms) - t0 ))
v1_ms=$(grep -o '"total":[0-9.]*' quickstart.log | head -n1 | cut -d: -f2 || true)
[[ -n $v1_ms ]] || v1_ms=$(grep -o 'total [0-9]*' quickstart.log | head -n1 | cut -d' ' -f2)

"$OLDPWD/$bin" --log-format json serve --config demo/greenbelt.toml > serve.log 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null -X POST localhost:$port/v2/models/fraud/infer -d @demo/fraud-request.json && break; sleep 0.1; done

# v2 through the pipeline (a gate may refuse it; we promote it by hand then, to time the switch).
t0=$(now_ms)
"$OLDPWD/$bin" pipeline run --config demo/greenbelt.toml demo/pipeline.toml --json > v2.json 2>/dev/null || true
v2_wall_ms=$(( $(now_ms) - t0 ))
if ! grep -q '"promoted":true' v2.json; then
    v=$(python3 -c 'import json;print(json.load(open("v2.json"))["registered_version"])')
    "$OLDPWD/$bin" registry --config demo/greenbelt.toml alias set fraud champion "$v" --reason bench >/dev/null
fi
sleep 1
t0=$(now_ms)
rollback=$("$OLDPWD/$bin" registry --config demo/greenbelt.toml --json rollback fraud --reason bench)
# Until a client sees version 1 again.
for _ in $(seq 1 500); do
    v=$(curl -s -D - -o /dev/null -X POST localhost:$port/v2/models/fraud/infer -d @demo/fraud-request.json | tr -d '\r' | awk -F': ' 'tolower($1)=="x-greenbelt-model-version"{print $2}')
    [[ $v == 1 ]] && break
done
visible_ms=$(( $(now_ms) - t0 ))
sleep 0.5
python3 - "$quickstart_ms" "$v1_ms" "$v2_wall_ms" "$visible_ms" "$rollback" <<'PY' | tee "$OLDPWD/bench/out/registry.json"
import json, sys
quickstart_ms, v1_ms, v2_wall_ms, visible_ms, rollback = sys.argv[1:6]
switches = [json.loads(l) for l in open("serve.log") if "route switched" in l]
print(json.dumps({
    "pipeline": "gbdt" if "gradient-boosted" in open("quickstart.log").read() else "logreg",
    "quickstart_wall_ms": int(quickstart_ms),
    "pipeline_v1_total_ms": float(v1_ms),
    "pipeline_v2_wall_ms": int(v2_wall_ms),
    "switches": [{"from": s.get("from"), "to": s.get("to"), "switch_ms": s.get("switch_ms"), "was_warm": s.get("was_warm")} for s in switches],
    "cli_rollback_ms": json.loads(rollback)["took_ms"],
    "rollback_visible_to_clients_ms": int(visible_ms),
    "poll_interval_ms": 200,
}, indent=2))
PY
