//! Every statistic against scipy/numpy (`tests/golden.json`, written by
//! `scripts/drift-golden.py` with the versions in
//! `scripts/drift-golden-requirements.txt`).
//!
//! Tolerances: statistics to 1e-9 relative or 1e-12 absolute (values near 0
//! come from cancellation); p-values to 1e-9 relative with no absolute
//! escape, so a p-value of 1e-37 must be right to 1e-46 (below 1e-300,
//! where doubles lose their bits, both must be below 1e-300).

use std::sync::OnceLock;

use greenbelt_drift::profile::NumericProfile;
use greenbelt_drift::{
    KsMethod, bin_of, chisquare, jensenshannon, ks_2samp, ks_2samp_sorted, ks_pvalue, psi,
    quantile_edges, wasserstein_distance, wasserstein_sorted,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    scipy: String,
    two_sample: Vec<TwoSample>,
    ks_pvalue: Vec<KsPvalue>,
    chisquare: Vec<ChiCase>,
    jensenshannon: Vec<JsCase>,
    psi: Vec<PsiCase>,
}

#[derive(Deserialize)]
struct TwoSample {
    name: String,
    scale: f64,
    a: Vec<i64>,
    b: Vec<i64>,
    ks_statistic: f64,
    ks_pvalue: f64,
    ks_method: KsMethod,
    wasserstein: f64,
}

#[derive(Deserialize)]
struct KsPvalue {
    d: f64,
    n1: u64,
    n2: u64,
    pvalue: f64,
    method: KsMethod,
}

#[derive(Deserialize)]
struct ChiCase {
    name: String,
    observed: Vec<f64>,
    proportions: Vec<f64>,
    statistic: f64,
    pvalue: f64,
    dof: u64,
}

#[derive(Deserialize)]
struct JsCase {
    name: String,
    p: Vec<f64>,
    q: Vec<f64>,
    distance: f64,
}

#[derive(Deserialize)]
struct PsiCase {
    name: String,
    scale: f64,
    bins: usize,
    reference: Vec<i64>,
    current: Vec<i64>,
    edges_bits: Vec<u64>,
    psi: f64,
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden.json");
        let text = std::fs::read_to_string(path).expect("tests/golden.json");
        serde_json::from_str(&text).expect("golden.json parses")
    })
}

/// k / scale: the same correctly rounded division numpy did.
fn decode(ints: &[i64], scale: f64) -> Vec<f64> {
    ints.iter().map(|k| *k as f64 / scale).collect()
}

fn stat_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs() || (got - want).abs() <= 1e-12
}

fn p_close(got: f64, want: f64) -> bool {
    // Below 1e-300 the doubles are (nearly) subnormal and carry too few bits
    // for a relative comparison; both must be down there.
    if want.abs() < 1e-300 {
        return got.abs() < 1e-300;
    }
    (got - want).abs() <= 1e-9 * want.abs()
}

#[test]
fn golden_file_is_from_scipy() {
    let g = golden();
    assert!(g.scipy.starts_with("1."), "{}", g.scipy);
    assert!(g.two_sample.len() >= 20 && g.ks_pvalue.len() >= 200);
}

#[test]
fn ks_2samp_equals_scipy() {
    for c in &golden().two_sample {
        let (a, b) = (decode(&c.a, c.scale), decode(&c.b, c.scale));
        let r = ks_2samp(&a, &b).unwrap();
        let ctx = format!(
            "{}: got D={} p={} {:?}, scipy D={} p={} {:?}",
            c.name, r.statistic, r.pvalue, r.method, c.ks_statistic, c.ks_pvalue, c.ks_method
        );
        assert_eq!(r.method, c.ks_method, "{ctx}");
        assert!(stat_close(r.statistic, c.ks_statistic), "{ctx}");
        assert!(p_close(r.pvalue, c.ks_pvalue), "{ctx}");
        // The sorted entry point and the p-value of D computed elsewhere agree.
        let (mut sa, mut sb) = (a.clone(), b.clone());
        sa.sort_by(f64::total_cmp);
        sb.sort_by(f64::total_cmp);
        assert_eq!(ks_2samp_sorted(&sa, &sb).unwrap(), r, "{}", c.name);
        let (p, m) = ks_pvalue(r.statistic, a.len() as u64, b.len() as u64);
        assert_eq!((p, m), (r.pvalue, r.method), "{}", c.name);
    }
}

#[test]
fn ks_pvalue_equals_scipy_on_every_branch() {
    let mut worst = 0.0f64;
    for c in &golden().ks_pvalue {
        let (p, m) = ks_pvalue(c.d, c.n1, c.n2);
        let ctx = format!(
            "d={} n1={} n2={}: got {p} {m:?}, scipy {} {:?}",
            c.d, c.n1, c.n2, c.pvalue, c.method
        );
        assert_eq!(m, c.method, "{ctx}");
        assert!(p_close(p, c.pvalue), "{ctx}");
        if c.pvalue > 0.0 {
            worst = worst.max(((p - c.pvalue) / c.pvalue).abs());
        }
    }
    eprintln!("ks_pvalue: worst relative error against scipy {worst:e}");
}

#[test]
fn wasserstein_equals_scipy() {
    for c in &golden().two_sample {
        let (a, b) = (decode(&c.a, c.scale), decode(&c.b, c.scale));
        let w = wasserstein_distance(&a, &b).unwrap();
        assert!(
            stat_close(w, c.wasserstein),
            "{}: {w} vs {}",
            c.name,
            c.wasserstein
        );
        let (mut sa, mut sb) = (a, b);
        sa.sort_by(f64::total_cmp);
        sb.sort_by(f64::total_cmp);
        assert_eq!(wasserstein_sorted(&sa, &sb).unwrap(), w);
    }
}

#[test]
fn chisquare_equals_scipy() {
    for c in &golden().chisquare {
        let r = chisquare(&c.observed, &c.proportions).unwrap();
        let ctx = format!(
            "{}: got {} p={} dof={}, scipy {} p={} dof={}",
            c.name, r.statistic, r.pvalue, r.dof, c.statistic, c.pvalue, c.dof
        );
        assert_eq!(r.dof, c.dof, "{ctx}");
        assert!(stat_close(r.statistic, c.statistic), "{ctx}");
        assert!(p_close(r.pvalue, c.pvalue), "{ctx}");
    }
}

#[test]
fn jensenshannon_equals_scipy() {
    for c in &golden().jensenshannon {
        let d = jensenshannon(&c.p, &c.q).unwrap();
        assert!(
            stat_close(d, c.distance),
            "{}: {d} vs {}",
            c.name,
            c.distance
        );
    }
}

#[test]
fn psi_equals_numpy_and_the_profile_reproduces_it() {
    for c in &golden().psi {
        let (reference, current) = (decode(&c.reference, c.scale), decode(&c.current, c.scale));
        let mut sorted = reference.clone();
        sorted.sort_by(f64::total_cmp);
        let edges = quantile_edges(&sorted, c.bins);
        let numpy_edges: Vec<f64> = c.edges_bits.iter().map(|b| f64::from_bits(*b)).collect();
        assert_eq!(
            edges, numpy_edges,
            "{}: numpy's linear quantiles, bit for bit",
            c.name
        );
        let shares = |xs: &[f64]| {
            let mut counts = vec![0u64; edges.len() + 1];
            xs.iter().for_each(|x| counts[bin_of(&edges, *x)] += 1);
            counts
                .iter()
                .map(|n| *n as f64 / xs.len() as f64)
                .collect::<Vec<_>>()
        };
        let raw = psi(&shares(&reference), &shares(&current)).unwrap();
        assert!(
            stat_close(raw, c.psi),
            "{}: {raw} vs numpy {}",
            c.name,
            c.psi
        );

        // The profile's window gives the same PSI, exactly.
        let profile = NumericProfile::from_values(&reference, 10 * c.bins, c.bins).unwrap();
        assert_eq!(profile.psi_edges, edges, "{}", c.name);
        let mut window = profile.window();
        current
            .iter()
            .for_each(|x| profile.observe(&mut window, *x));
        assert_eq!(profile.psi(&window), Some(raw), "{}", c.name);
    }
}
