#!/usr/bin/env bash
# The bad-deployment drill, once for each failure kind (error, slow, wrong),
# against a real `greenbelt serve` of examples/releases/greenbelt.toml.
# Each run prints its measured report; the script fails if any drill does.
#
#   bash scripts/drill.sh            # all three kinds
#   bash scripts/drill.sh wrong      # one kind
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bin=${GREENBELT_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/greenbelt}
[[ -x $bin ]] || cargo build -p greenbelt
if [[ -z "${ORT_DYLIB_PATH:-}" ]] && ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
    ORT_DYLIB_PATH="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
    export ORT_DYLIB_PATH
fi
kinds=("$@")
[[ ${#kinds[@]} -gt 0 ]] || kinds=(error slow wrong)

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s/127.0.0.1:18000/127.0.0.1:$port/" examples/releases/greenbelt.toml > "$work/greenbelt.toml"
cd "$work"
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" registry register fraud --file "$root/fixtures/models/logreg/1/model.onnx" >/dev/null
"$bin" registry alias set fraud champion 1 --reason "drill baseline" >/dev/null
"$bin" serve > serve.log 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/v2/models/fraud/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/v2/models/fraud/ready" >/dev/null || { echo "drill.sh: server not ready"; tail -20 serve.log; exit 1; }

status=0
for kind in "${kinds[@]}"; do
    echo "== drill bad-deploy --kind $kind"
    if ! "$bin" drill bad-deploy --kind "$kind" --server "http://127.0.0.1:$port"; then
        status=1
        tail -20 serve.log
    fi
done
echo "== greenbelt rollout status fraud (the last drill's rollout)"
"$bin" rollout status fraud || status=1
echo "== greenbelt shadow report fraud (the drills' shadow comparisons)"
"$bin" shadow report fraud --server "http://127.0.0.1:$port" || status=1
exit $status
