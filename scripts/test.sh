#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the Python
# suite that drives `greenbelt serve` with the official tritonclient.
#
#   bash scripts/test.sh
#
# Sets up .venv (tritonclient, onnxruntime, pytest) on first run; the
# onnxruntime wheel also provides the libonnxruntime.so the tests load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

req=tests/python/requirements.txt
if [[ ! -x .venv/bin/python ]] || ! cmp -s "$req" .venv/.requirements.txt; then
    echo "test.sh: creating .venv from $req"
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" .venv/.requirements.txt
fi
# Absolute: test binaries run in their crate's directory.
ORT_DYLIB_PATH="$PWD/$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH
echo "test.sh: ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

# The external-training-command test uses the venv's scikit-learn.
export GREENBELT_TEST_PYTHON="$PWD/.venv/bin/python"
# Registry tests also run on PostgreSQL when one answers (else they say SKIP).
if [[ -z "${GREENBELT_TEST_POSTGRES_URL:-}" ]] && command -v pg_isready >/dev/null \
    && pg_isready -q -h 127.0.0.1 -p 5432 -t 3; then
    export GREENBELT_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
fi
echo "test.sh: GREENBELT_TEST_POSTGRES_URL=${GREENBELT_TEST_POSTGRES_URL:-<unset: PostgreSQL tests skip>}"
# Feature-store online tests also run on Redis when one answers (else they say SKIP).
if [[ -z "${GREENBELT_TEST_REDIS_URL:-}" ]] && command -v redis-cli >/dev/null \
    && timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export GREENBELT_TEST_REDIS_URL="redis://127.0.0.1:6379"
fi
echo "test.sh: GREENBELT_TEST_REDIS_URL=${GREENBELT_TEST_REDIS_URL:-<unset: Redis tests skip>}"
# The payload log's NATS sink test runs on a NATS JetStream server when one
# answers on 127.0.0.1:4222 (else it says SKIP).
if [[ -z "${GREENBELT_TEST_NATS_URL:-}" ]] && timeout 2 bash -c '</dev/tcp/127.0.0.1/4222' >/dev/null 2>&1; then
    export GREENBELT_TEST_NATS_URL="nats://127.0.0.1:4222"
fi
echo "test.sh: GREENBELT_TEST_NATS_URL=${GREENBELT_TEST_NATS_URL:-<unset: NATS tests skip>}"

# S3 artifact tests run against a local moto server (from the venv) on a free
# port; stopped when this script exits.
if [[ -z "${GREENBELT_TEST_S3_ENDPOINT:-}" ]]; then
    s3_port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    .venv/bin/python -m moto.server -H 127.0.0.1 -p "$s3_port" >/tmp/greenbelt-test-moto.log 2>&1 &
    s3_pid=$!
    trap 'kill "$s3_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 60); do
        if .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$s3_port/', timeout=1)" 2>/dev/null; then
            export GREENBELT_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
            break
        fi
        sleep 0.5
    done
fi
echo "test.sh: GREENBELT_TEST_S3_ENDPOINT=${GREENBELT_TEST_S3_ENDPOINT:-<unset: moto did not start, see /tmp/greenbelt-test-moto.log; S3 tests skip>}"

# The test build also builds the greenbelt binary the Python suite drives.
# (No separate `cargo build -p greenbelt`: building one package alone unifies
# dependency features differently from the workspace test build — tokio's
# test-util, for one — and would compile DataFusion a second time.)
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
# The binary that build made, wherever CARGO_TARGET_DIR put it.
export GREENBELT_BIN="${GREENBELT_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/greenbelt}"
.venv/bin/python -m pytest tests/python -q
