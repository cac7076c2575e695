//! The profile grid, its PSI exactness under ties, the measured KS
//! approximation and the categorical bound.

use greenbelt_drift::profile::{
    CategoricalProfile, ColumnProfile, MAX_NEW_CATEGORIES, NumericProfile, NumericWindow,
    PROFILE_FORMAT, Profile,
};
use greenbelt_drift::{DriftError, ks_2samp, quantile};

use crate::support::Rng;

#[test]
fn resolution_must_be_a_multiple_of_psi_bins() {
    let err = NumericProfile::from_values(&[1.0, 2.0], 25, 10).unwrap_err();
    let DriftError::Mismatch(msg) = err else {
        panic!("want Mismatch, got {err:?}");
    };
    assert!(
        msg.contains("resolution 25") && msg.contains("psi_bins 10"),
        "{msg}"
    );
    assert!(NumericProfile::from_values(&[1.0], 10, 0).is_err());
    assert!(NumericProfile::from_values(&[1.0], 0, 10).is_err());
    assert_eq!(
        NumericProfile::from_values(&[f64::NAN, f64::INFINITY], 100, 10),
        Err(DriftError::Empty("reference"))
    );
}

#[test]
fn psi_edges_are_grid_edges_under_heavy_ties() {
    // 70% zeros, 20% ones, the rest spread: many quantiles coincide.
    let mut rng = Rng::new(5);
    let values: Vec<f64> = (0..10_000)
        .map(|_| match rng.uniform() {
            u if u < 0.7 => 0.0,
            u if u < 0.9 => 1.0,
            _ => rng.normal() * 3.0,
        })
        .collect();
    for (resolution, psi_bins) in [(100, 10), (1000, 10), (60, 5), (10, 10), (7, 7)] {
        let p = NumericProfile::from_values(&values, resolution, psi_bins).unwrap();
        assert!(p.edges.len() < resolution - 1, "ties merge edges");
        assert!(
            p.psi_edges.iter().all(|e| p.edges.contains(e)),
            "{resolution}/{psi_bins}: {:?} not within {:?}",
            p.psi_edges,
            p.edges
        );
        // PSI of the reference against itself through a window is 0.
        let mut w = p.window();
        values.iter().for_each(|x| p.observe(&mut w, *x));
        assert_eq!(p.psi(&w), Some(0.0));
        assert_eq!(w.counts, p.counts);
    }
}

#[test]
fn missing_and_infinite_values() {
    let values = [
        f64::NAN,
        1.0,
        2.0,
        3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let p = NumericProfile::from_values(&values, 4, 2).unwrap();
    assert_eq!(p.missing, 2);
    assert_eq!(p.counts.iter().sum::<u64>(), 5);
    assert_eq!((p.min, p.max, p.mean), (1.0, 3.0, 2.0));
    assert!(p.counts[0] >= 1 && p.counts[p.counts.len() - 1] >= 1);
    // A default window takes the grid's shape on first use.
    let mut w = NumericWindow::default();
    assert_eq!(p.psi(&w), None);
    assert_eq!(p.ks(&w), None);
    p.observe(&mut w, f64::NAN);
    p.observe(&mut w, 2.5);
    assert_eq!((w.count(), w.missing, w.mean()), (1, 1, Some(2.5)));
    assert!(p.psi(&w).is_some());
    // A window of another grid gets no statistics, and no panic.
    let other = NumericWindow {
        counts: vec![1; 3],
        ..NumericWindow::default()
    };
    assert_eq!(p.psi(&other), None);
    assert_eq!(p.ks(&other), None);
    let mut other = other;
    p.observe(&mut other, 1e9);
}

#[test]
fn quantile_off_the_grid() {
    let mut rng = Rng::new(9);
    let mut values = rng.normals(20_000, 0.0, 1.0);
    let p = NumericProfile::from_values(&values, 100, 10).unwrap();
    values.sort_by(f64::total_cmp);
    // Exact at the grid's levels, within one bin in between.
    for i in 1..100 {
        let q = i as f64 / 100.0;
        assert!((p.quantile(q) - quantile(&values, q)).abs() < 1e-3, "{q}");
    }
    for q in [0.005, 0.123, 0.5, 0.777, 0.995] {
        let (got, want) = (p.quantile(q), quantile(&values, q));
        let bin = quantile(&values, q + 0.01) - quantile(&values, q - 0.01).max(p.min);
        assert!((got - want).abs() <= bin, "{q}: {got} vs {want}");
    }
    assert_eq!(p.quantile(0.0), p.min);
    assert_eq!(p.quantile(1.0), p.max);
    assert_eq!(p.quantile(7.0), p.max);
    assert!(p.quantile(f64::NAN).is_nan());
}

/// Measures the grid KS against exact `ks_2samp` on the raw values at
/// resolution 100 and checks the bound D_grid <= D <= D_grid + max share.
#[test]
fn ks_from_the_grid_under_reads_by_at_most_the_largest_bin_share() {
    let mut rng = Rng::new(42);
    let reference = rng.normals(20_000, 0.0, 1.0);
    let p = NumericProfile::from_values(&reference, 100, 10).unwrap();
    let mut worst_under_read = 0.0f64;
    let mut worst_bound = 0.0f64;
    let windows = [
        ("same", 0.0, 1.0, 5_000),
        ("same_small", 0.0, 1.0, 300),
        ("shift_0.05", 0.05, 1.0, 5_000),
        ("shift_0.1", 0.1, 1.0, 20_000),
        ("shift_0.3", 0.3, 1.0, 2_000),
        ("shift_1", 1.0, 1.0, 1_000),
        ("scale_1.3", 0.0, 1.3, 5_000),
        ("scale_0.7", 0.0, 0.7, 50_000),
    ];
    for (name, shift, scale, n) in windows {
        let current = rng.normals(n, shift, scale);
        let mut w = p.window();
        current.iter().for_each(|x| p.observe(&mut w, *x));
        let approx = p.ks(&w).unwrap();
        let exact = ks_2samp(&reference, &current).unwrap();
        let bound = p.ks_bound(&w).unwrap();
        let under = exact.statistic - approx.statistic;
        eprintln!(
            "ks grid vs exact, {name} (n={n}): D_grid={:.5} D={:.5} under-read={:.5} bound={:.5} p_grid={:.3e} p={:.3e}",
            approx.statistic, exact.statistic, under, bound, approx.pvalue, exact.pvalue
        );
        assert!(under >= -1e-12, "{name}: the grid never over-reads");
        assert!(
            under <= bound + 1e-12,
            "{name}: under-read {under} > bound {bound}"
        );
        // The measured number the docs quote: well inside 0.01 at 100 bins.
        assert!(under < 0.01, "{name}: under-read {under}");
        worst_under_read = worst_under_read.max(under);
        worst_bound = worst_bound.max(bound);
    }
    eprintln!("ks grid: worst under-read {worst_under_read:.5}, worst bound {worst_bound:.5}");
}

#[test]
fn ks_from_the_grid_is_exact_when_values_are_grid_points() {
    // Integer data whose every value is an edge: the grid sees every jump.
    let reference: Vec<f64> = (0..1000).map(|i| f64::from(i % 10)).collect();
    let current: Vec<f64> = (0..700).map(|i| f64::from((i * 7) % 10 / 2 + 2)).collect();
    let p = NumericProfile::from_values(&reference, 10, 10).unwrap();
    let mut w = p.window();
    current.iter().for_each(|x| p.observe(&mut w, *x));
    let exact = ks_2samp(&reference, &current).unwrap();
    let grid = p.ks(&w).unwrap();
    assert!((grid.statistic - exact.statistic).abs() < 1e-12);
    assert_eq!(grid.method, exact.method);
    assert!((grid.pvalue - exact.pvalue).abs() <= 1e-12 * exact.pvalue.max(1e-300));
}

#[test]
fn categorical_window_keeps_64_new_categories_then_other() {
    let reference = ["a", "b", "b", "c"];
    let p = CategoricalProfile::from_values(reference.iter().map(|s| Some(*s)).chain([None]));
    assert_eq!(p.missing, 1);
    assert_eq!(p.counts.get("b"), Some(&2));
    let mut w = p.window();
    for i in 0..100 {
        p.observe(&mut w, Some(&format!("new{i}")));
    }
    p.observe(&mut w, Some("a"));
    p.observe(&mut w, None);
    assert_eq!(w.counts.len(), 3 + MAX_NEW_CATEGORIES);
    assert_eq!(w.other, 100 - MAX_NEW_CATEGORIES as u64);
    assert_eq!((w.count(), w.missing), (101, 1));
    // An already named new category keeps counting by name.
    p.observe(&mut w, Some("new3"));
    assert_eq!(w.counts.get("new3"), Some(&2));
    // A flood of new categories is drift on every statistic.
    assert!(p.psi(&w).unwrap() > 1.0);
    let chi = p.chisquare(&w).unwrap();
    assert!(chi.pvalue < 1e-10, "{chi:?}");
    assert!(p.jensenshannon(&w).unwrap() > 0.5);
}

#[test]
fn categorical_statistics_without_drift() {
    let values: Vec<&str> = (0..1000).map(|i| ["x", "y", "z", "w"][i % 4]).collect();
    let p = CategoricalProfile::from_values(values.iter().map(|s| Some(*s)));
    let mut w = p.window();
    assert_eq!(p.psi(&w), None);
    assert_eq!(p.chisquare(&w), None);
    assert_eq!(p.jensenshannon(&w), None);
    values[..400]
        .iter()
        .for_each(|v| p.observe(&mut w, Some(v)));
    assert_eq!(p.psi(&w), Some(0.0));
    let chi = p.chisquare(&w).unwrap();
    assert_eq!((chi.statistic, chi.pvalue, chi.dof), (0.0, 1.0, 3));
    assert_eq!(p.jensenshannon(&w), Some(0.0));
}

#[test]
fn profile_serialises_round_trip() {
    let mut rng = Rng::new(1);
    let numeric = NumericProfile::from_values(&rng.normals(500, 0.0, 1.0), 100, 10).unwrap();
    let categorical = CategoricalProfile::from_values([Some("a"), None, Some("b")]);
    let profile = Profile {
        format: PROFILE_FORMAT,
        rows: 500,
        columns: [
            ("amount".to_owned(), ColumnProfile::Numeric(numeric)),
            (
                "country".to_owned(),
                ColumnProfile::Categorical(categorical),
            ),
        ]
        .into_iter()
        .collect(),
    };
    let json = serde_json::to_string(&profile).unwrap();
    assert!(json.contains(r#""kind":"numeric""#));
    let back: Profile = serde_json::from_str(&json).unwrap();
    assert_eq!(back.columns.len(), 2);
    // Floats may move by an ulp through serde_json's default parser; counts
    // and structure may not.
    let (ColumnProfile::Numeric(a), ColumnProfile::Numeric(b)) =
        (&profile.columns["amount"], &back.columns["amount"])
    else {
        panic!("numeric column")
    };
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.edges.len(), b.edges.len());
    assert_eq!(back.columns["country"], profile.columns["country"]);
}

#[test]
fn ks_asymptotic_is_ks_where_scipy_would_use_the_asymptotic_method_too() {
    let reference: Vec<f64> = (0..20_000).map(|i| f64::from(i % 997) / 997.0).collect();
    let current: Vec<f64> = (0..12_000).map(|i| f64::from(i % 991) / 900.0).collect();
    let p = NumericProfile::from_values(&reference, 100, 10).unwrap();
    let mut w = p.window();
    current.iter().for_each(|x| p.observe(&mut w, *x));
    let auto = p.ks(&w).unwrap();
    let asymp = p.ks_asymptotic(&w).unwrap();
    assert_eq!(auto.method, greenbelt_drift::KsMethod::Asymptotic);
    assert_eq!(auto, asymp);
    // Small samples: same D, the asymptotic p-value instead of the exact one.
    let small = NumericProfile::from_values(&reference[..500], 100, 10).unwrap();
    let mut w = small.window();
    current[..300]
        .iter()
        .for_each(|x| small.observe(&mut w, *x));
    let (auto, asymp) = (small.ks(&w).unwrap(), small.ks_asymptotic(&w).unwrap());
    assert_eq!(auto.method, greenbelt_drift::KsMethod::Exact);
    assert_eq!(auto.statistic, asymp.statistic);
    assert_eq!(
        asymp.pvalue,
        greenbelt_drift::ks_pvalue_asymptotic(asymp.statistic, 500, 300)
    );
}
