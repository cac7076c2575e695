#!/usr/bin/env bash
# The data-pipeline outage drill against a real `greenbelt serve` of
# examples/pipeline-outage (its own redis-server on a free port as the
# online store): `greenbelt drill pipeline-outage` feeds the view, stops
# materializing, measures detection and flagged serving, backfills and
# measures recovery. Prints the measured report; fails if the drill does.
#
#   bash scripts/pipeline-drill.sh
#   GREENBELT_BIN=/path/to/greenbelt bash scripts/pipeline-drill.sh --json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
bin=${GREENBELT_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/greenbelt}
[[ -x $bin ]] || cargo build -p greenbelt
if [[ -z "${ORT_DYLIB_PATH:-}" ]] && ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
    ORT_DYLIB_PATH="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
    export ORT_DYLIB_PATH
fi
command -v redis-server >/dev/null || { echo "pipeline-drill.sh: redis-server is not on PATH (the drill's online store)"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
port=$(free_port)
rport=$(free_port)
cp -r examples/pipeline-outage/. "$work/"
mkdir -p "$work/models/scorer/1"
cp fixtures/models/logreg/1/model.onnx "$work/models/scorer/1/model.onnx"
sed -i "s/127.0.0.1:18100/127.0.0.1:$port/" "$work/greenbelt.toml"
sed -i "s#redis://127.0.0.1:6379/0#redis://127.0.0.1:$rport/0#" "$work/features.toml"
cd "$work"
pid=""
rpid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null
    [[ -n $rpid ]] && kill "$rpid" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no > redis.log 2>&1 &
rpid=$!
"$bin" serve > serve.log 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/v2/models/scorer/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/v2/models/scorer/ready" >/dev/null || { echo "pipeline-drill.sh: server not ready"; tail -20 serve.log; exit 1; }

echo "== drill pipeline-outage"
status=0
"$bin" drill pipeline-outage --model scorer --server "http://127.0.0.1:$port" "$@" || { status=1; tail -30 serve.log; }
exit $status
