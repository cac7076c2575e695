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
ORT_DYLIB_PATH="$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
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

cargo build -p greenbelt
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
.venv/bin/python -m pytest tests/python -q
