//! Property tests of the statistics and the window sketches.

use greenbelt_drift::profile::{CategoricalProfile, NumericProfile};
use greenbelt_drift::{
    KsMethod, bin_of, chisquare, jensenshannon, ks_2samp, psi, wasserstein_distance,
};
use proptest::prelude::*;

/// Samples with many ties (small integers) or continuous values.
fn sample(max_len: usize) -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        prop::collection::vec((0i32..8).prop_map(f64::from), 1..max_len),
        prop::collection::vec(-1e6f64..1e6, 1..max_len),
    ]
}

/// Values for profiles: continuous, tied, or with NaN and infinities mixed in.
fn profile_values() -> impl Strategy<Value = Vec<f64>> {
    let value = prop_oneof![
        6 => -100.0f64..100.0,
        3 => (0i32..5).prop_map(f64::from),
        1 => Just(f64::NAN),
        1 => prop_oneof![Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ];
    prop::collection::vec(value, 1..300)
        .prop_filter("needs a finite value", |v| v.iter().any(|x| x.is_finite()))
}

/// Any double at all: NaN, ±∞, subnormals, ±0, extremes.
fn any_f64s() -> impl Strategy<Value = Vec<f64>> {
    let value = prop_oneof![
        prop::num::f64::ANY,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(-0.0),
        Just(f64::MAX),
    ];
    prop::collection::vec(value, 0..40)
}

fn grid() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=10, 1usize..=20).prop_map(|(psi_bins, k)| (psi_bins * k, psi_bins))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn nothing_panics_on_any_input(
        a in any_f64s(),
        b in any_f64s(),
        d in prop::num::f64::ANY,
        (n1, n2) in prop_oneof![(0u64..3000, 0u64..3000), (10_001u64..50_000, 0u64..200)],
        (resolution, psi_bins) in (0usize..50, 0usize..12),
        q in prop::num::f64::ANY,
    ) {
        let _ = ks_2samp(&a, &b);
        let _ = greenbelt_drift::ks_2samp_sorted(&a, &b);
        let (p, _) = greenbelt_drift::ks_pvalue(d, n1, n2);
        prop_assert!(p.is_nan() || (0.0..=1.0).contains(&p));
        let _ = wasserstein_distance(&a, &b);
        let _ = greenbelt_drift::wasserstein_sorted(&a, &b);
        let n = a.len().min(b.len());
        let _ = chisquare(&a[..n], &b[..n]);
        let _ = chisquare(&a, &b);
        let _ = jensenshannon(&a[..n], &b[..n]);
        let _ = psi(&a[..n], &b[..n]);
        let _ = psi(&a, &b);
        let _ = greenbelt_drift::quantile_edges(&a, psi_bins);
        if let Ok(p) = NumericProfile::from_values(&a, resolution, psi_bins) {
            let mut w = p.window();
            b.iter().for_each(|x| p.observe(&mut w, *x));
            let _ = (p.psi(&w), p.ks(&w), p.ks_bound(&w), p.quantile(q));
            let mut other = greenbelt_drift::profile::NumericWindow::default();
            other.merge(&w);
            let _ = p.ks(&other);
        }
    }

    #[test]
    fn ks_is_symmetric_and_in_range(a in sample(120), b in sample(120)) {
        let ab = ks_2samp(&a, &b).unwrap();
        let ba = ks_2samp(&b, &a).unwrap();
        prop_assert_eq!(ab, ba);
        prop_assert!((0.0..=1.0).contains(&ab.statistic));
        prop_assert!((0.0..=1.0).contains(&ab.pvalue));
        prop_assert_eq!(ab.method, KsMethod::Exact);
    }

    #[test]
    fn ks_of_identical_samples_is_zero(a in sample(200)) {
        let mut shuffled = a.clone();
        shuffled.reverse();
        let r = ks_2samp(&a, &shuffled).unwrap();
        prop_assert_eq!((r.statistic, r.pvalue), (0.0, 1.0));
    }

    #[test]
    fn wasserstein_is_symmetric_and_zero_on_itself(a in sample(100), b in sample(100)) {
        let ab = wasserstein_distance(&a, &b).unwrap();
        prop_assert!(ab >= 0.0);
        prop_assert_eq!(ab, wasserstein_distance(&b, &a).unwrap());
        prop_assert_eq!(wasserstein_distance(&a, &a).unwrap(), 0.0);
    }

    #[test]
    fn js_and_chisquare_stay_in_range(
        pq in prop::collection::vec((0.0f64..10.0, 0.0f64..10.0), 2..40)
    ) {
        let (p, q): (Vec<f64>, Vec<f64>) = pq.into_iter().unzip();
        if let Ok(d) = jensenshannon(&p, &q) {
            prop_assert!((0.0..=2f64.ln().sqrt() + 1e-15).contains(&d));
        }
        if let Ok(c) = chisquare(&p, &q) {
            prop_assert!(c.statistic >= 0.0);
            prop_assert!((0.0..=1.0).contains(&c.pvalue));
        }
    }

    #[test]
    fn psi_is_non_negative(
        rc in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 1..30)
    ) {
        let (r, c): (Vec<f64>, Vec<f64>) = rc.into_iter().unzip();
        let (rs, cs) = (r.iter().sum::<f64>(), c.iter().sum::<f64>());
        prop_assume!(rs > 0.0 && cs > 0.0);
        let r: Vec<f64> = r.iter().map(|x| x / rs).collect();
        let c: Vec<f64> = c.iter().map(|x| x / cs).collect();
        prop_assert!(psi(&r, &c).unwrap() >= 0.0);
    }

    #[test]
    fn psi_edges_are_grid_edges(values in profile_values(), (resolution, psi_bins) in grid()) {
        let p = NumericProfile::from_values(&values, resolution, psi_bins).unwrap();
        for e in &p.psi_edges {
            prop_assert!(p.edges.contains(e), "psi edge {} not on the grid {:?}", e, p.edges);
        }
        prop_assert!(p.edges.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(p.counts.len(), p.edges.len() + 1);
        let n = values.iter().filter(|v| !v.is_nan()).count() as u64;
        prop_assert_eq!(p.counts.iter().sum::<u64>(), n);
    }

    #[test]
    fn window_psi_equals_raw_psi_and_is_non_negative(
        reference in profile_values(),
        current in profile_values(),
        (resolution, psi_bins) in grid(),
    ) {
        let p = NumericProfile::from_values(&reference, resolution, psi_bins).unwrap();
        let mut w = p.window();
        current.iter().for_each(|x| p.observe(&mut w, *x));
        let shares = |xs: &[f64]| {
            let kept: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
            let mut counts = vec![0u64; p.psi_edges.len() + 1];
            kept.iter().for_each(|x| counts[bin_of(&p.psi_edges, *x)] += 1);
            counts.iter().map(|c| *c as f64 / kept.len() as f64).collect::<Vec<_>>()
        };
        let raw = psi(&shares(&reference), &shares(&current)).unwrap();
        let got = p.psi(&w).unwrap();
        prop_assert_eq!(got, raw);
        prop_assert!(got >= 0.0);
    }

    #[test]
    fn window_merge_equals_counting_the_concatenation(
        reference in profile_values(),
        xs in profile_values(),
        ys in profile_values(),
    ) {
        let p = NumericProfile::from_values(&reference, 20, 10).unwrap();
        let (mut wx, mut wy, mut wall) = (p.window(), p.window(), p.window());
        xs.iter().for_each(|x| p.observe(&mut wx, *x));
        ys.iter().for_each(|y| p.observe(&mut wy, *y));
        xs.iter().chain(&ys).for_each(|v| p.observe(&mut wall, *v));
        wx.merge(&wy);
        prop_assert_eq!(&wx.counts, &wall.counts);
        prop_assert_eq!(wx.missing, wall.missing);
        prop_assert_eq!(wx.count(), wall.count());
        // Sums differ only by the order of floating additions.
        let (a, b) = (wx.sum, wall.sum);
        prop_assert!(a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan()));
    }

    #[test]
    fn categorical_merge_equals_counting_the_concatenation(
        reference in prop::collection::vec(prop::option::of(0u8..10), 1..100),
        xs in prop::collection::vec(prop::option::of(0u8..150), 0..200),
        ys in prop::collection::vec(prop::option::of(0u8..150), 0..200),
    ) {
        let names = |v: &[Option<u8>]| v.iter().map(|x| x.map(|k| format!("c{k}"))).collect::<Vec<_>>();
        let (r, x, y) = (names(&reference), names(&xs), names(&ys));
        let p = CategoricalProfile::from_values(r.iter().map(|v| v.as_deref()));
        let (mut wx, mut wy, mut wall) = (p.window(), p.window(), p.window());
        x.iter().for_each(|v| p.observe(&mut wx, v.as_deref()));
        y.iter().for_each(|v| p.observe(&mut wy, v.as_deref()));
        x.iter().chain(&y).for_each(|v| p.observe(&mut wall, v.as_deref()));
        p.merge(&mut wx, &wy);
        // Totals always agree; which new categories keep a name can differ
        // once the bound is reached, never the number kept.
        prop_assert_eq!(wx.count(), wall.count());
        prop_assert_eq!(wx.missing, wall.missing);
        prop_assert!(wx.counts.len() <= p.counts.len() + 64);
        prop_assert_eq!(wx.counts.len(), wall.counts.len());
        if let Some(v) = p.psi(&wx) {
            prop_assert!(v >= 0.0);
        }
    }
}
