"""Generate the drift benchmark's data: a reference and a drifted current
file, ROWS rows each, 20 numeric columns (n00..n19) and 5 categorical ones
(c0..c4), Parquet. Every tool reads these same two files.

Numeric columns cycle through shapes (normal, lognormal, uniform, small
integers with many ties, exponential); n00..n04 have a shifted mean in the
current file, n05..n07 a wider spread, n08 and n09 1% NaN on both sides,
the rest are drawn again from the reference's distribution. c0 and c1 change
their category weights, c2..c4 do not; c3 has 50 categories.

usage: python gen.py OUT_DIR ROWS
"""

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def numeric(rng, i, n, current):
    shift = 0.25 if current and i < 5 else 0.0
    scale = 1.4 if current and 5 <= i < 8 else 1.0
    kind = i % 5
    if kind == 0:
        x = rng.normal(shift, scale, n)
    elif kind == 1:
        x = rng.lognormal(shift, 0.6 * scale, n)
    elif kind == 2:
        x = rng.uniform(shift, shift + scale, n)
    elif kind == 3:
        x = rng.integers(0, 20, n).astype(np.float64) * scale + round(shift * 4)
    else:
        x = rng.exponential(scale, n) + shift
    if i in (8, 9):
        x[rng.random(n) < 0.01] = np.nan
    return x


def categorical(rng, j, n, current):
    k = 50 if j == 3 else 4 + 3 * j
    w = np.linspace(1.0, 3.0, k)
    if current and j < 2:
        w = w[::-1].copy()
    w = w / w.sum()
    names = np.array([f"cat_{j}_{v:02d}" for v in range(k)])
    return names[rng.choice(k, n, p=w)]


def table(seed, n, current):
    rng = np.random.default_rng(seed)
    cols = {f"n{i:02d}": numeric(rng, i, n, current) for i in range(20)}
    for j in range(5):
        cols[f"c{j}"] = categorical(rng, j, n, current)
    return pa.table(cols)


def main():
    out, rows = sys.argv[1], int(sys.argv[2])
    pq.write_table(table(1, rows, False), f"{out}/reference.parquet", row_group_size=128 * 1024)
    pq.write_table(table(2, rows, True), f"{out}/current.parquet", row_group_size=128 * 1024)


if __name__ == "__main__":
    main()
