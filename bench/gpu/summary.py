"""Print a `greenbelt bench devices --json` report as a table (bench/gpu/device.sh)."""

import json
import sys

r = json.load(open(sys.argv[1]))
print(f"{r['model']}: the GPU is faster from batch {r.get('gpu_faster_from_batch')}")
for run in r["runs"]:
    print(f"  {run['device']} ({run.get('backend')}) {run.get('error') or ''}")
    for p in run["points"]:
        lat = {k: round(v, 4) for k, v in p.items() if k.startswith("p") and isinstance(v, float)}
        print(f"    batch {p['batch']:>5}: {p['rows_per_s']:>12.0f} rows/s, {p['calls_per_s']:>9.1f} calls/s, "
              f"{lat}, {p['windows']} windows, stable={p['stable']}")
