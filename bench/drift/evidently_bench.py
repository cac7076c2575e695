"""Evidently's DataDriftPreset on the drift benchmark's files, one process:
pandas reads the Parquet files (`read_s`), then the report runs
(`report_s`, Evidently's default per-column tests: normed Wasserstein for
numeric and Jensen-Shannon for categorical columns above 1000 rows).
Prints one JSON object with the per-column values Evidently computed.

usage: python evidently_bench.py REFERENCE CURRENT
"""

import json
import re
import sys
import time

import pandas as pd


def main():
    t0 = time.perf_counter()
    ref = pd.read_parquet(sys.argv[1])
    cur = pd.read_parquet(sys.argv[2])
    read_s = time.perf_counter() - t0

    from evidently import Report
    from evidently.presets import DataDriftPreset

    t1 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    report_s = time.perf_counter() - t1

    values, share = {}, None
    for m in snapshot.dict()["metrics"]:
        name = m["metric_name"]
        found = re.match(r"ValueDrift\(column=([^,]+),method=([^,]+),", name)
        if found:
            values[found.group(1)] = {"method": found.group(2), "value": m["value"]}
        elif name.startswith("DriftedColumnsCount"):
            share = m["value"]["share"]
    print(json.dumps({"read_s": read_s, "report_s": report_s, "share": share, "values": values}))


if __name__ == "__main__":
    main()
