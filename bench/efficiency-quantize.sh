#!/usr/bin/env bash
# fp32 vs int8 vs fp16 (and distilled students) on two MLPs: size, latency
# (batch 1 and 64, ONNX Runtime, one thread) and holdout metric delta,
# through `greenbelt optimize quantize --model-file` and `greenbelt optimize
# distill` (docs/efficiency.md, "Quantization").
#
#   bash bench/efficiency-quantize.sh            # prints the Markdown table
#
# Models and holdouts are made at run time by scripts/efficiency-models.py
# into a temporary directory (nothing big is committed): the MLP fixture
# (30 features, 3 classes) and a scikit-learn MLPClassifier (256, 256) on
# 200 features. The same files are also timed with Python onnxruntime as a
# reference that no Greenbelt build affects.
#
# Environment: GREENBELT (binary; default: a release build with `optimize`
# at target-rel/ or target/release/, else the debug build under
# $CARGO_TARGET_DIR or target/), PYTHON (with numpy, scikit-learn, skl2onnx,
# onnxruntime; default .venv/bin/python), ORT_DYLIB_PATH (default: the
# library of that Python's onnxruntime), REQUESTS (timed calls per model and
# batch size, default 2000), KEEP=1 keeps the temporary directory.
set -euo pipefail

say() { echo "efficiency-quantize: $*" >&2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
REQUESTS="${REQUESTS:-2000}"

has_optimize() { [[ -x "$1" ]] && "$1" optimize --help >/dev/null 2>&1; }
if [[ -z "${GREENBELT:-}" ]]; then
    for cand in "$ROOT/target-rel/release/greenbelt" "$ROOT/target/release/greenbelt" \
        "${CARGO_TARGET_DIR:-$ROOT/target}/debug/greenbelt" "$ROOT/target/debug/greenbelt"; do
        if has_optimize "$cand"; then GREENBELT="$cand"; break; fi
    done
fi
if [[ -z "${GREENBELT:-}" ]] || ! has_optimize "$GREENBELT"; then
    say "no greenbelt binary with \`optimize\`: cargo build --workspace (or set GREENBELT)"; exit 1
fi
case "$GREENBELT" in
    */release/*) BUILD=release ;;
    *) BUILD="debug (unoptimized Rust around ONNX Runtime's release library)" ;;
esac
if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$("$PYTHON" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))[0])')"
    export ORT_DYLIB_PATH
fi

OUT="$(mktemp -d -t efficiency-quantize.XXXXXX)"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$OUT"' EXIT; else say "keeping $OUT"; fi

say "models and holdouts -> $OUT"
"$PYTHON" "$ROOT/scripts/efficiency-models.py" models "$OUT"
for model in mlp mlp256; do
    for mode in int8 fp16; do
        say "$model: $mode ($REQUESTS calls per model at batch 1 and 64)"
        # Exit 1 with a report on stdout is a failed gate, reported as such.
        GREENBELT_LOG=warn "$GREENBELT" optimize quantize --mode "$mode" \
            --model-file "$OUT/$model/model.onnx" --output "$OUT/$model/$mode.onnx" \
            --data "$OUT/$model/holdout.csv" --label y \
            --batch-sizes 1,64 --requests "$REQUESTS" --json \
            >"$OUT/$model-$mode.json" || [[ -s "$OUT/$model-$mode.json" ]]
    done
done
# Distillation needs a registry (the student is registered with lineage to
# its teacher): one in $OUT. The 3-class fixture has no binary logit to match.
say "mlp256: distill (gbdt, logreg) into a registry in $OUT"
(
    cd "$OUT"
    GREENBELT_LOG=warn "$GREENBELT" registry register mlp256 --file "$OUT/mlp256/model.onnx" >/dev/null
    for student in gbdt logreg; do
        GREENBELT_LOG=warn "$GREENBELT" optimize distill --teacher mlp256:1 --student "$student" \
            --data "$OUT/mlp256/train.csv" --holdout "$OUT/mlp256/holdout.csv" --label y \
            --n-estimators "${DISTILL_TREES:-200}" --max-depth "${DISTILL_DEPTH:-4}" \
            --batch-sizes 1,64 --requests "$REQUESTS" --json \
            >"$OUT/mlp256-distill-$student.json" || [[ -s "$OUT/mlp256-distill-$student.json" ]]
    done
)
# The students' ONNX files, for the Python timing: from the artifact store.
for student in gbdt logreg; do
    sha="$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["derived"]["sha256"])' "$OUT/mlp256-distill-$student.json")"
    cp "$(find "$OUT/.greenbelt/artifacts" -name "$sha.onnx" | head -1)" "$OUT/mlp256/distill-$student.onnx"
done
say "the same files on Python onnxruntime"
"$PYTHON" "$ROOT/scripts/efficiency-models.py" time "$OUT"

echo "Measured $(date -u +%Y-%m-%d) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
echo "greenbelt $BUILD, ONNX Runtime $(basename "$ORT_DYLIB_PATH" | sed 's/libonnxruntime.so.//'), $REQUESTS timed calls per model and batch size;"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
"$PYTHON" "$ROOT/scripts/efficiency-models.py" report "$OUT"
