"""Feast's side of the feature-store benchmark (`bash bench/features.sh`).

    python feast_bench.py materialize|online|historical --dir bench/out/features

Reads what `feature_bench gen` wrote into --dir (meta.json, the Parquet
sources, the entity rows, the online ids), builds a Feast repository over
THE SAME Parquet files in a temporary directory (file offline store, Redis
online store on the same Redis as Greenbelt, `store.apply`, which is what
`feast apply` calls), runs one phase and prints one JSON object per result
on stdout. Each phase runs in its own process so that its peak RSS
(`ru_maxrss`) is its own.

Redis: database and address from FEATURE_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/15, the same as Greenbelt's side). Only this
project's keys (ending in the project name) are deleted before a
materialization.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

PROJECT = "gbbenchfeast"


def peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def redis_parts() -> tuple[str, int, int]:
    u = urlparse(os.environ.get("FEATURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    db = int(u.path.strip("/") or 0)
    return u.hostname or "127.0.0.1", u.port or 6379, db


def versions() -> dict:
    import dask
    import feast
    import pandas
    import pyarrow
    import redis

    return {
        "feast": feast.__version__,
        "pandas": pandas.__version__,
        "dask": dask.__version__,
        "pyarrow": pyarrow.__version__,
        "redis_py": redis.__version__,
        "python": sys.version.split()[0],
    }


def build_store(data_dir: Path, meta: dict):
    """A Feast repo in a temp dir over the generated Parquet files."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, Int64
    from feast.value_type import ValueType

    host, port, db = redis_parts()
    repo = Path(tempfile.mkdtemp(prefix="feast_bench_"))
    (repo / "feature_store.yaml").write_text(
        f"""project: {PROJECT}
provider: local
registry:
  path: {repo / 'registry.db'}
  cache_ttl_seconds: 0
online_store:
  type: redis
  connection_string: "{host}:{port},db={db}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""
    )
    store = FeatureStore(repo_path=str(repo))
    key = meta["join_key"]
    driver = Entity(name="driver", join_keys=[key], value_type=ValueType.INT64)
    views = []
    for v in meta["view_specs"]:
        src = FileSource(
            name=f"{v['name']}_src",
            path=str((data_dir / v["source"]).resolve()),
            timestamp_field="event_timestamp",
        )
        views.append(
            FeatureView(
                name=v["name"],
                entities=[driver],
                ttl=timedelta(days=meta["ttl_days"]),
                schema=[Field(name=key, dtype=Int64)]
                + [Field(name=f, dtype=Float64) for f in v["features"]],
                source=src,
                online=True,
            )
        )
    service = FeatureService(name=meta["service"], features=views)
    store.apply([driver, *views, service])
    return store, service


def clear_feast_keys() -> int:
    import redis

    host, port, db = redis_parts()
    r = redis.Redis(host=host, port=port, db=db)
    deleted = 0
    batch = []
    for k in r.scan_iter(match=f"*{PROJECT}", count=10000):
        batch.append(k)
        if len(batch) >= 10000:
            deleted += r.unlink(*batch)
            batch = []
    if batch:
        deleted += r.unlink(*batch)
    return deleted


def ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


def phase_materialize(data_dir: Path, meta: dict) -> None:
    store, _ = build_store(data_dir, meta)
    cleared = clear_feast_keys()
    rss_before = current_rss_bytes()
    start = ts(meta["start_us"] - meta["start_us"] % 86_400_000_000)
    end = ts(meta["end_us"])
    t = time.perf_counter()
    store.materialize(start_date=start, end_date=end)
    secs = time.perf_counter() - t
    rows = meta["feature_rows"]
    emit({
        "bench": "materialize", "system": "feast", "phase": "online", "target": "redis",
        "rows": rows, "seconds": secs, "rows_per_s": rows / secs,
        "peak_rss_bytes": peak_rss_bytes(), "rss_before_bytes": rss_before,
        "redis_keys_cleared_before": cleared, "versions": versions(),
    })


def percentiles(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    n = len(s)

    def q(p: float) -> float:
        # Nearest rank, like HdrHistogram's value_at_quantile.
        i = min(n - 1, max(0, int(-(-p * n // 1)) - 1))
        return s[i] / 1000.0

    return {
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
        "max_us": s[-1] / 1000.0, "mean_us": sum(s) / n / 1000.0,
    }


def phase_online(data_dir: Path, meta: dict, iters: int, batch_iters: int) -> None:
    store, service = build_store(data_dir, meta)
    key = meta["join_key"]
    ids = json.loads((data_dir / meta["online_ids_file"]).read_text())
    feature_names = [f for v in meta["view_specs"] for f in v["features"]]

    def call(chunk):
        return store.get_online_features(
            features=service, entity_rows=[{key: i} for i in chunk]
        ).to_dict()

    # Warm-up over every id once (also the present fraction and the cross-check).
    present = values = 0
    checks = []
    for n, s in enumerate(range(0, len(ids), 100)):
        chunk = ids[s:s + 100]
        d = call(chunk)
        for f in feature_names:
            col = d[f]
            values += len(col)
            present += sum(1 for x in col if x is not None)
        if n == 0:
            for row in range(3):
                checks.append({"id": chunk[row], "values": {f: d[f][row] for f in feature_names}})
    for name, rows, count in (("1x50", 1, iters), ("100x50", 100, batch_iters)):
        chunks = [ids[s:s + rows] for s in range(0, len(ids) - rows + 1, rows)]
        warm = max(10, count // 10)
        for i in range(warm):
            call(chunks[i % len(chunks)])
        samples = []
        t0 = time.perf_counter()
        for i in range(count):
            c = chunks[i % len(chunks)]
            t = time.perf_counter_ns()
            call(c)
            samples.append(time.perf_counter_ns() - t)
        wall = time.perf_counter() - t0
        emit({
            "bench": "online", "system": "feast", "store": "redis", "cache": "none",
            "shape": name, "entity_rows": rows, "features": len(feature_names),
            "iters": count, "warmup": warm, **percentiles(samples),
            "calls_per_s": count / wall,
            "present_fraction": present / values if values else 0.0,
            "check": checks, "versions": versions(),
        })
    emit(redis_ping(iters))


def redis_ping(iters: int) -> dict:
    """Round trips to Redis alone from Python (redis-py + hiredis): Feast's floor."""
    import redis

    host, port, db = redis_parts()
    r = redis.Redis(host=host, port=port, db=db)
    samples = []
    for i in range(iters + iters // 10):
        t = time.perf_counter_ns()
        r.ping()
        if i >= iters // 10:
            samples.append(time.perf_counter_ns() - t)
    return {"bench": "online", "system": "feast", "store": "redis", "what": "ping", "iters": iters,
            **percentiles(samples)}


def phase_historical(data_dir: Path, meta: dict) -> None:
    import pandas as pd

    store, service = build_store(data_dir, meta)
    feature_names = [f for v in meta["view_specs"] for f in v["features"]]
    rss_before = current_rss_bytes()
    t = time.perf_counter()
    entity_df = pd.read_parquet(data_dir / meta["entity_file"])
    df = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    secs = time.perf_counter() - t
    peak = peak_rss_bytes()
    sub = df[feature_names]
    cross = cross_check(data_dir, df, meta, feature_names)
    emit({
        "bench": "historical", "system": "feast", "entity_rows": len(df),
        "feature_rows": meta["feature_rows"], "features": len(feature_names), "seconds": secs,
        "peak_rss_bytes": peak, "rss_before_bytes": rss_before,
        "output": "pandas DataFrame (to_df)",
        "checksum": {"sum": float(sub.sum().sum()), "nulls": int(sub.isna().sum().sum())},
        "cross_check": cross, "versions": versions(),
    })


def cross_check(data_dir: Path, df, meta: dict, feature_names: list[str]) -> dict | None:
    """Compare with Greenbelt's answer (written just before by the same run), after timing."""
    import numpy as np
    import pandas as pd

    path = data_dir / "historical_greenbelt.parquet"
    if not path.exists() or path.stat().st_mtime < (data_dir / "meta.json").stat().st_mtime:
        return None
    key = [meta["join_key"], "event_timestamp"]
    g = pd.read_parquet(path)
    f = df[key + feature_names].copy()
    for side in (g, f):
        side["event_timestamp"] = pd.to_datetime(side["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    # Entity rows that repeat (same id and time) are one row in Feast's answer.
    g1 = g.drop_duplicates(subset=key)
    f1 = f.drop_duplicates(subset=key)
    m = g1.merge(f1, on=key, how="inner", suffixes=("_g", "_f"))
    differ = 0
    for c in feature_names:
        a = m[f"{c}_g"].to_numpy(dtype="float64")
        b = m[f"{c}_f"].to_numpy(dtype="float64")
        same = (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-12)
        differ += int((~same).sum())
    return {
        "greenbelt_rows": int(len(g)), "feast_rows": int(len(df)),
        "greenbelt_distinct_rows": int(len(g1)), "feast_distinct_rows": int(len(f1)),
        "rows_compared": int(len(m)), "values_compared": int(len(m) * len(feature_names)),
        "values_differing": differ,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["materialize", "online", "historical"])
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--iters", type=int, default=int(os.environ.get("FEAST_BENCH_ONLINE_ITERS", 2000)))
    ap.add_argument("--batch-iters", type=int,
                    default=int(os.environ.get("FEAST_BENCH_ONLINE_BATCH_ITERS", 200)))
    a = ap.parse_args()
    meta = json.loads((a.dir / "meta.json").read_text())
    if a.phase == "materialize":
        phase_materialize(a.dir, meta)
    elif a.phase == "online":
        phase_online(a.dir, meta, a.iters, a.batch_iters)
    else:
        phase_historical(a.dir, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
