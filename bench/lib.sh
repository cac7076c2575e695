# Shared by the benchmark scripts (sourced; they define `say` first).

# The interpreter for the peers' venvs: $PYTHON, else python3.11, else
# python3; exits unless it is Python >= 3.10.
bench_python() {
    local python="${PYTHON:-}" cand
    if [[ -z "$python" ]]; then
        for cand in python3.11 python3; do
            if command -v "$cand" >/dev/null 2>&1; then python="$cand"; break; fi
        done
    fi
    "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
        say "need Python >= 3.10 (set PYTHON=...)"; exit 1; }
    echo "$python"
}

# ensure_venv VENV REQUIREMENTS PYTHON: create VENV when missing and
# (re)install REQUIREMENTS only when the file changed since the last install
# (its sha256 is kept in VENV/.requirements.sha256).
ensure_venv() {
    local venv="$1" req="$2" python="$3" stamp="$1/.requirements.sha256" want have
    if [[ ! -x "$venv/bin/python" ]]; then
        say "creating $venv"
        "$python" -m venv "$venv"
    fi
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        say "installing $req"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
        echo "$want" >"$stamp"
    fi
}

# bench_ort ROOT: libonnxruntime.so: $ORT_DYLIB_PATH, else the one in
# ROOT/.venv or ROOT/bench/.venv-mlserver; exits when there is none.
bench_ort() {
    local root="$1" ort="${ORT_DYLIB_PATH:-}"
    if [[ -z "$ort" ]]; then
        ort="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* \
            "$root"/bench/.venv-mlserver/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* \
            2>/dev/null | head -1 || true)"
    fi
    [[ -f "$ort" ]] || { say "no libonnxruntime.so found (set ORT_DYLIB_PATH, or run bash scripts/test.sh once)"; exit 1; }
    echo "$ort"
}
