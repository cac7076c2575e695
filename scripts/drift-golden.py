#!/usr/bin/env python3
"""Writes crates/greenbelt-drift/tests/golden.json: the reference answers of
scipy and numpy for the drift statistics that greenbelt-drift reimplements.

    python3 -m venv .venv-drift
    .venv-drift/bin/pip install -r scripts/drift-golden-requirements.txt
    .venv-drift/bin/python scripts/drift-golden.py

Every input is stored in the file, so the Rust test reads exactly the values
scipy saw: a sample is a list of integers k and a scale s, the value being
k / s (one correctly rounded division in both languages, so the doubles are
identical; integers also parse exactly, where a decimal float in JSON might
not). Expected values are stored as Python writes floats (shortest
round-trip); the Rust test compares them to 1e-9 relative (1e-12 absolute
near 0). The PSI edges, compared bit for bit, are stored as their IEEE-754
bit patterns (serde_json's default float parser can be an ulp off).

Sections:
- two_sample: data pairs with scipy.stats.ks_2samp (statistic, p-value,
  method) and scipy.stats.wasserstein_distance;
- ks_pvalue: (d, n1, n2) against scipy's 'auto' rule evaluated with its own
  helpers (exact lattice paths up to 10000, kstwo.sf beyond), chosen to land
  on every branch of kstwo (Ruben-Gambino ends, Durbin, Pomeranz, Pelz-Good,
  Smirnov exact and Miller, the n > 1e6 approximation);
- chisquare: scipy.stats.chisquare with f_exp = p / sum(p) * sum(obs), and
  for categories the reference lacks the crate's rule applied first (both 0:
  dropped; proportion 0 with a count: floored to 1e-4);
- jensenshannon: scipy.spatial.distance.jensenshannon;
- psi: numpy deciles (np.quantile, linear), np.searchsorted(edges, x,
  side='right'), shares floored at 1e-4, sum (c - r) * ln(c / r).

Nothing happens at import; the generator is deterministic (fixed seeds).
"""

import json
import math
import pathlib
import struct
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/greenbelt-drift/tests/golden.json"
PSI_EPS = 1e-4


def encode(values, scale):
    """Integers k with k / scale the sample; values are rounded to the grid."""
    import numpy as np

    ks = np.rint(np.asarray(values, dtype=float) * scale).astype(np.int64)
    return [int(k) for k in ks]


def decode(ints, scale):
    import numpy as np

    return np.asarray(ints, dtype=np.int64) / float(scale)


def scipy_ks_pvalue(d, n1, n2):
    """scipy's ks_2samp 'auto' p-value for a given D, from its own helpers."""
    import numpy as np
    from scipy import stats
    from scipy.stats import _stats_py

    if max(n1, n2) <= 10000:
        g = math.gcd(n1, n2)
        ok, d, p = _stats_py._attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if ok:
            return float(d), float(p), "exact"
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    p = stats.kstwo.sf(d, np.round(en))
    return float(d), float(np.clip(p, 0, 1)), "asymptotic"


def two_sample_case(name, a, b, scale):
    from scipy import stats

    ia, ib = encode(a, scale), encode(b, scale)
    a, b = decode(ia, scale), decode(ib, scale)
    r = stats.ks_2samp(a, b)
    _, p, method = scipy_ks_pvalue(float(r.statistic), len(a), len(b))
    assert p == float(r.pvalue), (name, p, r.pvalue)
    return {
        "name": name,
        "scale": scale,
        "a": ia,
        "b": ib,
        "ks_statistic": float(r.statistic),
        "ks_pvalue": float(r.pvalue),
        "ks_method": method,
        "wasserstein": float(stats.wasserstein_distance(a, b)),
    }


def two_sample_cases():
    import numpy as np

    rng = np.random.default_rng(20240613)
    norm = rng.standard_normal
    cases = [
        two_sample_case("one_vs_one", [1.0], [2.0], 1),
        two_sample_case("one_vs_one_equal", [3.0], [3.0], 1),
        two_sample_case("one_vs_three", [0.5], [0.1, 0.2, 0.9], 10),
        two_sample_case("tiny_5x7", norm(5), norm(7), 10**6),
        two_sample_case("small_20x30", norm(20), norm(30), 10**6),
        two_sample_case("small_100x80", norm(100), norm(80) + 0.3, 10**6),
        two_sample_case("square_100x100", norm(100), norm(100), 10**6),
        two_sample_case("square_300x300_shift1", norm(300), norm(300) + 1.0, 10**5),
        two_sample_case("exact_500x400_shift1_tiny_p", norm(500), norm(400) + 1.0, 10**5),
        two_sample_case("ties_int_200x300", rng.integers(0, 10, 200), rng.integers(0, 12, 300), 1),
        two_sample_case("ties_poisson_150x150", rng.poisson(3, 150), rng.poisson(3.3, 150), 1),
        two_sample_case(
            "ties_rounded_500x400", np.round(norm(500), 1), np.round(norm(400) * 1.1, 1), 10
        ),
        two_sample_case("identical_50", *(2 * [norm(50)]), 10**6),
        two_sample_case("scaled_2000x1500", norm(2000), 1.5 * norm(1500), 10**5),
        two_sample_case("shifted_1000x1200", norm(1000), norm(1200) + 0.3, 10**5),
        two_sample_case("exact_boundary_10000x9000", norm(10000), norm(9000) + 0.02, 10**4),
        two_sample_case("asymp_boundary_10001x9000", norm(10001), norm(9000) + 0.02, 10**4),
        two_sample_case("exact_square_10000", norm(10000), norm(10000) + 0.03, 10**4),
        two_sample_case("asymp_1x20000", [0.25], norm(20000), 10**4),
        two_sample_case("asymp_60x12000", norm(60) + 0.4, norm(12000), 10**4),
        two_sample_case("asymp_small_p_12000x11000", norm(12000), norm(11000) + 0.2, 10**3),
        two_sample_case("large_20000x15000", norm(20000), norm(15000), 10**4),
        two_sample_case("large_shift_20000x15000", norm(20000), norm(15000) + 0.04, 10**3),
    ]
    return cases


def ks_pvalue_cases():
    """(d, n1, n2) on every branch of the exact and asymptotic p-values."""
    cases = []
    # Asymptotic: en = round(n1·n2/(n1+n2)) chosen through n1 with n2 huge,
    # or n1 = n2 = 2·en for the large ones.
    for en in [1, 2, 7, 50, 140, 141, 500, 1000, 8571, 50000, 100000, 100001, 500000, 1250000]:
        n1, n2 = (en, 10**9) if en <= 20000 else (2 * en, 2 * en)
        ds = [0.4 / en, 0.7 / en, 1.0 / en]
        ds += [math.sqrt(c / en) for c in [0.3, 0.75, 1.0, 2.0, 2.5, 3.9, 10.0, 100.0, 369.0, 400.0]]
        ds += [0.5, 0.7, 1 - 1.5 / en, 1 - 0.5 / en, 1.0]
        # Pelz-Good vs Durbin split for n > 140: n·d^1.5 around 1.4.
        ds += [(1.2 / en) ** (2 / 3), (1.6 / en) ** (2 / 3)]
        for d in sorted({d for d in ds if 0 < d <= 1}):
            _, p, method = scipy_ks_pvalue(d, n1, n2)
            assert method == "asymptotic"
            cases.append({"d": d, "n1": n1, "n2": n2, "pvalue": p, "method": method})
    # Exact where it succeeds; n1 = n2 = 10000 with a small d rounds to a
    # "probability" of 1.0000000000000002, so scipy falls back to kstwo there.
    for n1, n2 in [(10, 10), (7, 13), (100, 100), (300, 200), (1000, 999), (10000, 9999), (10000, 10000)]:
        for c in [0.01, 0.1, 0.5, 1.0, 2.0, 4.0]:
            d = min(1.0, c / math.sqrt(min(n1, n2)))
            _, p, method = scipy_ks_pvalue(d, n1, n2)
            cases.append({"d": d, "n1": n1, "n2": n2, "pvalue": p, "method": method})
    return cases


def chisquare_case(name, obs, props):
    import numpy as np
    from scipy import stats

    obs = np.asarray(obs, dtype=float)
    props = np.asarray(props, dtype=float)
    keep = (obs > 0) | (props > 0)
    o, p = obs[keep], np.where(props[keep] > 0, props[keep], PSI_EPS)
    f_exp = p / p.sum() * o.sum()
    r = stats.chisquare(o, f_exp)
    return {
        "name": name,
        "observed": obs.tolist(),
        "proportions": props.tolist(),
        "statistic": float(r.statistic),
        "pvalue": float(r.pvalue),
        "dof": int(keep.sum() - 1),
    }


def chisquare_cases():
    import numpy as np

    rng = np.random.default_rng(7)

    def multinomial(n, p, tilt=0.0):
        q = np.asarray(p) * np.exp(tilt * np.linspace(-1, 1, len(p)))
        return rng.multinomial(n, q / q.sum())

    def dirichlet(k):
        return rng.dirichlet(np.ones(k))

    p50, p400, p1000 = dirichlet(50), dirichlet(400), dirichlet(1000)
    # Counts whose statistic lands within 30% of the dof (where Cephes uses
    # Temme's expansion): a·(1 ± small) around k − 1.
    near = np.array([100 + (9 if i % 2 else -9) for i in range(60)])
    return [
        chisquare_case("three_equal", [10, 20, 30], [1 / 3, 1 / 3, 1 / 3]),
        chisquare_case("two_dof1", [30, 70], [0.5, 0.5]),
        chisquare_case("empty_categories", [0, 5, 10, 0], [0.1, 0.3, 0.4, 0.2]),
        chisquare_case("counts_as_proportions", [12, 7, 31, 50], [100, 80, 300, 520]),
        chisquare_case("small_stat_dof1", [50, 51], [0.5, 0.5]),
        chisquare_case("small_stat_dof4", [20, 21, 19, 20, 20], [0.2] * 5),
        chisquare_case("small_stat_half", [101, 99, 100], [1, 1, 1]),
        chisquare_case("k50_null", multinomial(10000, p50), p50),
        chisquare_case("k50_drift", multinomial(10000, p50, 0.3), p50),
        chisquare_case("k60_stat_near_dof", near, [1] * 60),
        chisquare_case("k60_stat_below_dof", near // 2 * 2 - (near - 100) // 3, [1] * 60),
        chisquare_case("k400_null", multinomial(100000, p400), p400),
        chisquare_case("k1000_null", multinomial(1000000, p1000), p1000),
        chisquare_case("k1000_drift", multinomial(1000000, p1000, 0.02), p1000),
        chisquare_case("tiny_p", [400, 100, 250, 250], [0.25] * 4),
        chisquare_case("huge_stat_zero_p", [10000, 0, 0], [1 / 3] * 3),
        chisquare_case("new_category_floored", [10, 10, 1], [0.5, 0.5, 0.0]),
        chisquare_case("both_zero_dropped", [10, 0, 10, 3], [0.4, 0.0, 0.4, 0.2]),
    ]


def jensenshannon_cases():
    import numpy as np
    from scipy.spatial import distance

    rng = np.random.default_rng(11)
    pairs = [
        ("simple", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ("partial_overlap", [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]),
        ("unnormalised", [1.0, 2.0, 3.0], [30.0, 20.0, 10.0]),
        ("identical", [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),
        ("zeros_in_one", [0.1, 0.0, 0.9, 0.0], [0.25, 0.25, 0.25, 0.25]),
        ("random_k100", rng.random(100).tolist(), rng.random(100).tolist()),
        ("near_equal", [0.3, 0.3, 0.4], [0.3000001, 0.2999999, 0.4]),
    ]
    return [
        {"name": n, "p": p, "q": q, "distance": float(distance.jensenshannon(p, q))}
        for n, p, q in pairs
    ]


def psi_case(name, reference, current, scale, bins=10):
    import numpy as np

    ir, ic = encode(reference, scale), encode(current, scale)
    r, c = decode(ir, scale), decode(ic, scale)
    edges = np.unique(np.quantile(r, np.arange(1, bins) / bins))
    rs = np.bincount(np.searchsorted(edges, r, side="right"), minlength=len(edges) + 1) / len(r)
    cs = np.bincount(np.searchsorted(edges, c, side="right"), minlength=len(edges) + 1) / len(c)
    rs, cs = np.maximum(rs, PSI_EPS), np.maximum(cs, PSI_EPS)
    psi = float(np.sum((cs - rs) * np.log(cs / rs)))
    return {
        "name": name,
        "scale": scale,
        "bins": bins,
        "reference": ir,
        "current": ic,
        # Bit patterns: serde_json's default float parser may be an ulp off,
        # and the edges are compared bit for bit.
        "edges_bits": [struct.unpack("<Q", struct.pack("<d", e))[0] for e in edges.tolist()],
        "psi": psi,
    }


def psi_cases():
    import numpy as np

    rng = np.random.default_rng(3)
    norm = rng.standard_normal
    return [
        psi_case("normal_same", norm(5000), norm(2000), 10**5),
        psi_case("normal_shift", norm(5000), norm(2000) + 0.25, 10**5),
        psi_case("normal_scale", norm(3000), 2 * norm(3000), 10**5),
        psi_case("outside_range", norm(1000), norm(500) * 5, 10**4),
        psi_case("heavy_ties", rng.poisson(1.0, 4000), rng.poisson(1.5, 3000), 1),
        psi_case("mostly_zero", np.where(rng.random(2000) < 0.7, 0, norm(2000)), norm(500), 10**4),
        psi_case("tiny_reference", norm(15), norm(40), 10**3),
        psi_case("identical", *(2 * [norm(800)]), 10**5),
        psi_case("quintiles", norm(1000), norm(1000) + 0.1, 10**5, bins=5),
    ]


def main():
    import numpy as np
    import scipy

    golden = {
        "generator": "scripts/drift-golden.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "two_sample": two_sample_cases(),
        "ks_pvalue": ks_pvalue_cases(),
        "chisquare": chisquare_cases(),
        "jensenshannon": jensenshannon_cases(),
        "psi": psi_cases(),
    }
    text = json.dumps(golden, separators=(",", ":"))
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text) / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
