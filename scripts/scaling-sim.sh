#!/usr/bin/env bash
# Regenerate the plots and numbers of docs/scaling.md: replay the example
# day (examples/autoscale/load.csv) through the recommender with Knative's
# KPA and with HPA v2, 100 rps per replica, replicas ready 20 s after they
# are asked for.
#
#   bash scripts/scaling-sim.sh
#
# GREENBELT_BIN: the binary to use (default: cargo run -p greenbelt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GREENBELT_BIN:-}" ]; then gb=("$GREENBELT_BIN"); else gb=(cargo run -q -p greenbelt --); fi
for algorithm in kpa hpa; do
  echo "### ${algorithm}"
  echo
  echo '```text'
  "${gb[@]}" autoscale simulate --trace examples/autoscale/load.csv --algorithm "$algorithm" \
    --target 100 --startup 20s --out "docs/scaling-${algorithm}.svg" 2>/dev/null
  echo '```'
  echo
  echo "![${algorithm}: desired and ready replicas against the load](scaling-${algorithm}.svg)"
  echo
done
