#!/usr/bin/env bash
# Clean-build time of the quickstart's binary, one lever at a time.
#
# Each case builds `greenbelt` from an empty target directory with
# `cargo build --timings`, so both the wall time and where it went (per
# crate) are recorded; the machine should be otherwise idle (the load
# average before each build is recorded beside it).
#
#   bash bench/build.sh                      # the cases below, in order
#   bash bench/build.sh release quickstart   # some of them
#
# Cases:
#   release           cargo build --release -p greenbelt
#                     (what scripts/quickstart.sh ran before its profile)
#   release-no-s3     the same, --no-default-features (no S3 client)
#   quickstart        cargo build --profile quickstart -p greenbelt
#                     (what scripts/quickstart.sh runs: Cargo.toml says why)
#   quickstart-no-s3  the same, --no-default-features
#   release-datafusion-defaults
#                     release, in a copy of the tree whose Cargo.toml takes
#                     DataFusion with its default features (the lever that
#                     trimmed them, measured backwards; fetches the crates
#                     the defaults add)
#
# Results: bench/out/build/<case>.json (wall and CPU seconds, load, the
# slowest crates, the feature store's engine and the duplicated crates'
# share), then bench/build_report.py renders every case present into the
# build section of docs/benchmarks.md (BENCH_WRITE=0: print only).
# Dependencies are fetched before the clock starts (cargo fetch), so the
# network is not measured.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf 'bench/build.sh: %s\n' "$*"; }

out=${BENCH_OUT:-bench/out}/build
mkdir -p "$out"
cases=("$@")
[[ ${#cases[@]} -gt 0 ]] || cases=(release quickstart)

cargo fetch --locked >/dev/null

for c in "${cases[@]}"; do
    case "$c" in
        release) args=(--release -p greenbelt) ;;
        release-no-s3) args=(--release -p greenbelt --no-default-features) ;;
        quickstart) args=(--profile quickstart -p greenbelt) ;;
        quickstart-no-s3) args=(--profile quickstart -p greenbelt --no-default-features) ;;
        release-datafusion-defaults) args=(--release -p greenbelt) ;;
        *) echo "bench/build.sh: unknown case '$c' (release, release-no-s3, quickstart, quickstart-no-s3, release-datafusion-defaults)" >&2; exit 2 ;;
    esac
    target=$(mktemp -d "${TMPDIR:-/tmp}/greenbelt-build-$c.XXXXXX")
    tree=$PWD
    lock=(--locked --offline)
    if [[ "$c" == release-datafusion-defaults ]]; then
        tree=$target/tree
        mkdir -p "$tree"
        git ls-files -z | xargs -0 cp --parents -t "$tree"
        sed -i 's/^datafusion = { version = "\([0-9.]*\)", default-features = false, features = \[[^]]*\] }/datafusion = { version = "\1" }/' "$tree/Cargo.toml"
        grep -q '^datafusion = { version = "[0-9.]*" }$' "$tree/Cargo.toml" \
            || { say "could not give DataFusion its defaults in the copy's Cargo.toml"; exit 1; }
        (cd "$tree" && cargo fetch >/dev/null)
        lock=(--offline)
    fi
    say "$c: cargo build ${args[*]} (empty target directory $target/target)"
    BUILD_COMMIT="$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- . || echo ' (with uncommitted changes)')" \
        BUILD_CWD="$tree" python3 bench/build_case.py "$c" "$target/target" "$out/$c.json" -- \
        cargo build "${lock[@]}" --timings "${args[@]}"
    [[ "${BENCH_KEEP:-0}" == 1 ]] || rm -rf "$target"
done

python3 bench/build_report.py "$out" docs/benchmarks.md "${BENCH_WRITE:-1}"
