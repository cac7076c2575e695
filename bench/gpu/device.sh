#!/usr/bin/env bash
# The device side of bench/gpu/stage.sh (read that first). On the GPU
# machine, in the repository root:
#
#   bash bench/gpu/device.sh receive K     # keep part K (carried in .gpu/pK) for later calls
#   bash bench/gpu/device.sh run N         # check parts 1..N, unpack, measure, reports to $OUT
#
# GB_GPU_DIR (default /tmp/greenbelt-gpu) is where parts and the unpacked
# bundle live between calls. `run` also works here without a GPU: the CUDA
# side is then reported as not measured, with the reason, and the CPU side
# is measured (that is how this script was checked).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
dir="${GB_GPU_DIR:-/tmp/greenbelt-gpu}"
out="${OUT:-$dir/out}"
mkdir -p "$dir" "$out"
say() { echo "[gpu/device.sh] $*" >&2; }

case "${1:-}" in
receive)
    k="${2:?usage: device.sh receive K}"
    src="$root/.gpu/p$k"
    [[ -f "$src/bundle.part$k" ]] || { say "no $src/bundle.part$k: carry .gpu/p$k"; exit 2; }
    cp "$src/bundle.part$k" "$src/manifest" "$dir/"
    (cd "$dir" && grep " bundle.part$k\$" manifest | sha256sum -c --quiet -) || { say "part $k is damaged"; exit 1; }
    say "part $k kept in $dir ($(du -h "$dir/bundle.part$k" | cut -f1))"
    ;;
run)
    n="${2:?usage: device.sh run N}"
    for k in $(seq 1 "$n"); do
        [[ -f "$dir/bundle.part$k" ]] || { say "part $k missing: the machine was given back in between, start again"; exit 2; }
    done
    (cd "$dir" && sha256sum -c --quiet manifest) || { say "a part is damaged"; exit 1; }
    rm -rf "$dir/x" && mkdir -p "$dir/x"
    for k in $(seq 1 "$n"); do cat "$dir/bundle.part$k"; done | xz -d | tar -C "$dir/x" -xf -
    lib="$(ls "$dir"/x/lib/libonnxruntime.so.* | head -1)"
    # CUDA 13, cuBLAS, cuDNN 9, cuFFT, cuRAND, NVRTC: from the machine's own
    # NVIDIA wheels (PyTorch's), else from the system.
    libs="$(find /opt /usr/local /usr/lib -path '*nvidia*' \( -name 'libcublas.so*' -o -name 'libcudnn.so*' \
        -o -name 'libcudart.so*' -o -name 'libcufft.so*' -o -name 'libcurand.so*' -o -name 'libnvrtc.so*' \) \
        -printf '%h\n' 2>/dev/null | sort -u | paste -sd: || true)"
    export LD_LIBRARY_PATH="$dir/x/lib${libs:+:$libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"; } \
        | tee "$out/gpu.txt"
    gb="$dir/x/greenbelt"
    "$gb" --version | tee -a "$out/gpu.txt"
    # A compute-bound MLP (64 -> 2048 x3 -> 2), where a GPU can pay off,
    # beside the small MLP fixture, where it cannot.
    python3 bench/heavy_model.py "$dir/heavy.onnx" --hidden 2048 --layers 3 >&2
    for m in fixtures/models/mlp/1/model.onnx "$dir/heavy.onnx"; do
        name="$(basename "$(dirname "$(dirname "$m")")")"
        [[ "$m" == "$dir/heavy.onnx" ]] && name=heavy
        say "bench devices: $name"
        "$gb" bench devices --model-file "$m" --onnxruntime-library "$lib" --devices cpu,cuda \
            --batch-sizes "${GPU_BATCH_SIZES:-1,8,64,256,1024}" --window-ms "${GPU_WINDOW_MS:-500}" \
            --max-windows 8 --json >"$out/devices-$name.json"
        python3 bench/gpu/summary.py "$out/devices-$name.json" | tee "$out/devices-$name.txt"
    done
    say "reports: $out"
    ;;
*)
    echo "usage: bench/gpu/device.sh receive K | run N" >&2
    exit 2
    ;;
esac
