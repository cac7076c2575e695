#!/usr/bin/env bash
# Prepare the CPU-vs-GPU measurement for a lent GPU machine (the session's
# `device` tool), here, without a GPU:
#
#   bash bench/gpu/stage.sh            # writes .gpu/p1 .. .gpu/pN and prints the calls to make
#
# The GPU machine reaches nothing outside itself and takes at most 64 MiB
# per call (the working tree included), while ONNX Runtime's CUDA build
# (PyPI `onnxruntime-gpu`, whose CUDA provider library alone is 284 MB) does
# not fit one call. So this script packs what the run needs into one xz
# tarball — the release `greenbelt` binary (stripped), the ORT GPU build's
# libraries — and splits it into parts of at most GPU_PART_MIB (default 48)
# MiB, each in its own ignored folder `.gpu/pK` with a manifest of sha256
# sums. `bench/gpu/device.sh receive K` on the device moves part K aside
# (the machine keeps files between calls while it is warm);
# `bench/gpu/device.sh run` checks and unpacks them and runs `greenbelt
# bench devices` on the MLP fixture and on a compute-bound MLP, CPU and
# CUDA, writing the reports to $OUT.
#
# Knobs: ORT_GPU_VERSION (1.31.1: the newest onnxruntime-gpu; CUDA 13,
# cuDNN 9, as the GPU image's PyTorch cu130 wheels bring), GPU_PART_MIB,
# CARGO_TARGET_DIR, BENCH_BUILD (1: cargo build --release; 0: use the
# binary that is there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
say() { echo "[gpu/stage.sh] $*" >&2; }

version="${ORT_GPU_VERSION:-1.31.1}"
part_mib="${GPU_PART_MIB:-48}"
stage="$root/.gpu"
cache="$stage/cache"
target="${CARGO_TARGET_DIR:-$root/target}"

grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || {
    mkdir -p .git/info
    echo '/.gpu/' >>.git/info/exclude
}
mkdir -p "$cache"

# ---- ONNX Runtime's CUDA build, for the device's Python 3.12 image ----------
wheel="$(ls "$cache"/onnxruntime_gpu-"$version"-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$wheel" ]]; then
    say "downloading onnxruntime-gpu==$version (about 250 MB)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$cache" "onnxruntime-gpu==$version"
    wheel="$(ls "$cache"/onnxruntime_gpu-"$version"-*.whl | head -1)"
fi

# ---- the binary ------------------------------------------------------------
if [[ "${BENCH_BUILD:-1}" == 1 || ! -x "$target/release/greenbelt" ]]; then
    say "cargo build --release --workspace --bins --examples"
    cargo build --release --quiet --workspace --bins --examples
fi

# ---- pack and split ----------------------------------------------------------
pack="$stage/pack"
rm -rf "$pack" "$stage"/p[0-9]* "$stage/bundle.tar.xz"
mkdir -p "$pack/lib"
cp "$target/release/greenbelt" "$pack/greenbelt"
strip "$pack/greenbelt"
python3 - "$wheel" "$pack/lib" <<'EOF'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and "tensorrt" not in base:
            with z.open(n) as src, open(os.path.join(out, base), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
EOF
ls "$pack/lib"/libonnxruntime.so.* >/dev/null
say "packing $(du -sh "$pack" | cut -f1) with xz (a few minutes)"
tar -C "$pack" -cf - . | xz -T0 -6 >"$stage/bundle.tar.xz"
rm -rf "$pack"
split -b "${part_mib}M" -d -a 1 "$stage/bundle.tar.xz" "$stage/part."
n=0
for f in "$stage"/part.*; do
    n=$((n + 1))
    mkdir -p "$stage/p$n"
    mv "$f" "$stage/p$n/bundle.part$n"
done
rm -f "$stage/bundle.tar.xz"
(cd "$stage" && sha256sum p*/bundle.part* | sed 's| p[0-9]*/| |') >"$stage/manifest"
for k in $(seq 1 "$n"); do cp "$stage/manifest" "$stage/p$k/manifest"; done
say "$n parts of at most $part_mib MiB in .gpu/p1 .. .gpu/p$n"
echo "Device calls, in order, on one warm machine (each within its 64 MiB):"
for k in $(seq 1 "$n"); do
    echo "  run(carry=[\".gpu/p$k\"], command=\"bash bench/gpu/device.sh receive $k\", timeout_s=120)"
done
echo "  run(command=\"bash bench/gpu/device.sh run $n\", timeout_s=420)   # reports in \$OUT"
