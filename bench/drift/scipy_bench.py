"""The scipy/numpy side of the drift benchmark, in one Python process.

Reads the two Parquet files (timed as `read_s`), then computes per numeric
column scipy's ks_2samp and a numpy PSI (reference deciles by numpy's
default linear quantile, a value on an edge in the upper bin, empty bins
floored at 1e-4), per categorical column scipy's chisquare of the current
counts against the reference shares (`compute_s`: the set the issue names);
then, separately timed (`extra_s`), the rest of what `greenbelt drift
compare` reports: wasserstein_distance per numeric column, Jensen-Shannon
and PSI per categorical column. NaNs are dropped per column, as greenbelt
does. Prints one JSON object.

usage: python scipy_bench.py REFERENCE CURRENT
"""

import json
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from scipy import stats
from scipy.spatial import distance

EPS = 1e-4


def psi(r, c):
    r, c = np.maximum(r, EPS), np.maximum(c, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def main():
    t0 = time.perf_counter()
    tables = [pq.read_table(p) for p in sys.argv[1:3]]
    num = [f.name for f in tables[0].schema if str(f.type).startswith(("double", "int", "float"))]
    cat = [f.name for f in tables[0].schema if f.name not in num]
    data = []
    for t in tables:
        d = {}
        for n in num:
            x = t.column(n).to_numpy()
            d[n] = x[np.isfinite(x)]
        for n in cat:
            d[n] = t.column(n).to_pandas()
        data.append(d)
    ref, cur = data
    read_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    out = {"ks": {}, "ks_pvalue": {}, "psi": {}, "chisquare": {}}
    for n in num:
        r, c = ref[n], cur[n]
        ks = stats.ks_2samp(r, c)
        out["ks"][n] = float(ks.statistic)
        out["ks_pvalue"][n] = float(ks.pvalue)
        edges = np.quantile(r, np.arange(1, 10) / 10)
        edges = edges[np.concatenate(([True], edges[1:] != edges[:-1]))]
        rb = np.bincount(np.searchsorted(edges, r, side="right"), minlength=len(edges) + 1)
        cb = np.bincount(np.searchsorted(edges, c, side="right"), minlength=len(edges) + 1)
        out["psi"][n] = psi(rb / len(r), cb / len(c))
    counts = {}
    for n in cat:
        rc, cc = ref[n].value_counts(), cur[n].value_counts()
        keys = sorted(set(rc.index) | set(cc.index))
        rv = np.array([rc.get(k, 0) for k in keys], dtype=float)
        cv = np.array([cc.get(k, 0) for k in keys], dtype=float)
        counts[n] = (rv, cv)
        out["chisquare"][n] = float(stats.chisquare(cv, rv / rv.sum() * cv.sum()).statistic)
    compute_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    out["wasserstein_norm"], out["jensenshannon"] = {}, {}
    for n in num:
        w = stats.wasserstein_distance(ref[n], cur[n])
        out["wasserstein_norm"][n] = float(w / max(np.std(ref[n]), 0.001))
    for n in cat:
        rv, cv = counts[n]
        out["jensenshannon"][n] = float(distance.jensenshannon(rv, cv))
        out["psi"][n] = psi(rv / rv.sum(), cv / cv.sum())
    extra_s = time.perf_counter() - t2

    out.update(read_s=read_s, compute_s=compute_s, extra_s=extra_s, numeric=len(num), categorical=len(cat))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
