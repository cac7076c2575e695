//! Contracts: every rule kind on known data, `mostly`, PSI against a
//! reference, freshness, the report's numbers and its text/JSON forms.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use greenbelt_features::contracts::{Checker, Contract, ContractSpec, Policy, ValidationReport};

use crate::common::*;

fn contract(rules: &str, policy: &str) -> Contract {
    let spec: ContractSpec =
        toml::from_str(&format!("policy = \"{policy}\"\nrules = [{rules}]")).unwrap();
    Contract::from_spec("test", &spec, std::path::Path::new(".")).unwrap()
}

fn data() -> datafusion::arrow::array::RecordBatch {
    batch(vec![
        (
            "id",
            Arc::new(StringArray::from(vec![
                Some("a1"),
                Some("a2"),
                Some("a2"),
                Some("b4"),
                None,
            ])) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![
                Some(1.0),
                Some(-2.0),
                None,
                Some(500.0),
                Some(3.0),
            ])),
        ),
        (
            "kind",
            Arc::new(StringArray::from(vec![
                Some("x"),
                Some("y"),
                Some("z"),
                Some("x"),
                Some("x"),
            ])),
        ),
        (
            "ts",
            ts_array(vec![
                Some(T0),
                Some(T0 + SEC),
                Some(T0 + 2 * SEC),
                Some(T0 + 3 * SEC),
                Some(T0 + 4 * SEC),
            ]),
        ),
    ])
}

async fn check(rules: &str, policy: &str, now: i64) -> (Vec<Option<String>>, ValidationReport) {
    let c = contract(rules, policy);
    let mut ch = Checker::new("t", &c, Some("ts"), now).await.unwrap();
    let reasons = ch.check(&data()).unwrap();
    (reasons, ch.finish())
}

#[tokio::test]
async fn each_rule_counts_its_failures() {
    let (reasons, r) = check(
        r#"{ check = "not_null", column = "amount" },
           { check = "range", column = "amount", min = 0.0, max = 100.0 },
           { check = "allowed", column = "kind", values = ["x", "y"] },
           { check = "unique", columns = ["id"] },
           { check = "regex", column = "id", pattern = "^a[0-9]$" },
           { check = "row_count", min = 10 },
           { check = "type", column = "amount", type = "float64" }"#,
        "quarantine",
        T0,
    )
    .await;
    let by = |name: &str| {
        r.rules
            .iter()
            .find(|x| x.rule.starts_with(name))
            .unwrap()
            .clone()
    };
    assert_eq!((by("not_null").checked, by("not_null").failed), (5, 1));
    assert_eq!(by("not_null").failed_percent, 20.0);
    assert_eq!((by("range").checked, by("range").failed), (4, 2));
    assert_eq!(by("range").samples, ["-2", "500"]);
    assert_eq!(by("allowed").failed, 1);
    assert_eq!(by("allowed").samples, ["z"]);
    assert_eq!(by("unique").failed, 1);
    assert_eq!(by("regex").failed, 1);
    assert_eq!(by("regex").samples, ["b4"]);
    assert!(!by("row_count").passed);
    assert!(by("type").passed);
    assert!(!r.passed);
    // Row-level reasons: rows 1 (range), 2 (not_null), 3 (range), and the duplicate.
    assert!(reasons[0].is_none());
    assert!(reasons[1].as_ref().unwrap().contains("range"));
    assert!(reasons[2].as_ref().unwrap().contains("not_null"));
    assert!(reasons[3].is_some());
    assert!(reasons[4].is_none(), "a null id is not a regex failure");
    assert_eq!(r.quarantined, 3);
    let text = r.text();
    assert!(
        text.contains("FAIL") && text.contains("range(amount in [0, 100])"),
        "{text}"
    );
    let back: ValidationReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
    assert_eq!(r.policy, Policy::Quarantine);
}

#[tokio::test]
async fn mostly_tolerates_a_fraction() {
    let (reasons, r) = check(
        r#"{ check = "not_null", column = "amount", mostly = 0.8 }"#,
        "fail",
        T0,
    )
    .await;
    assert!(r.passed, "{}", r.text());
    assert!(
        reasons.iter().all(Option::is_none),
        "a tolerated rule does not reject rows"
    );
    let (_, r) = check(
        r#"{ check = "not_null", column = "amount", mostly = 0.9 }"#,
        "fail",
        T0,
    )
    .await;
    assert!(!r.passed);
    assert!(r.failure().unwrap().contains("not_null(amount)"));
}

#[tokio::test]
async fn freshness_measures_the_newest_event() {
    let (_, r) = check(
        r#"{ check = "freshness", max_age = "10s" }"#,
        "fail",
        T0 + 10 * SEC,
    )
    .await;
    assert!(r.passed, "{}", r.text());
    let (_, r) = check(
        r#"{ check = "freshness", max_age = "10s" }"#,
        "fail",
        T0 + 20 * SEC,
    )
    .await;
    assert!(!r.passed);
    assert!(
        r.rules[0].detail.as_ref().unwrap().contains("16s old"),
        "{:?}",
        r.rules[0].detail
    );
}

#[tokio::test]
async fn psi_against_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut same = String::from("amount\n");
    let mut shifted = String::from("amount\n");
    for i in 0..1000 {
        same.push_str(&format!("{}\n", i % 100));
        shifted.push_str(&format!("{}\n", 60 + i % 100));
    }
    std::fs::write(dir.path().join("ref.csv"), &same).unwrap();
    let spec: ContractSpec = toml::from_str(
        "rules = [{ check = \"psi\", column = \"amount\", reference = \"ref.csv\", max = 0.2 }]",
    )
    .unwrap();
    let c = Contract::from_spec("t", &spec, dir.path()).unwrap();
    let cur = |text: &str| {
        let vals: Vec<f64> = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
        batch(vec![(
            "amount",
            Arc::new(Float64Array::from(vals)) as ArrayRef,
        )])
    };
    let mut ch = Checker::new("t", &c, None, T0).await.unwrap();
    ch.check(&cur(&same)).unwrap();
    let r = ch.finish();
    assert!(r.passed, "{}", r.text());
    let mut ch = Checker::new("t", &c, None, T0).await.unwrap();
    ch.check(&cur(&shifted)).unwrap();
    let r = ch.finish();
    assert!(!r.passed, "{}", r.text());
    assert!(r.rules[0].detail.as_ref().unwrap().starts_with("psi "));
}

#[tokio::test]
async fn a_rule_on_a_missing_column_names_it() {
    let c = contract(r#"{ check = "not_null", column = "nope" }"#, "fail");
    let mut ch = Checker::new("t", &c, None, T0).await.unwrap();
    let e = ch.check(&data()).unwrap_err().to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("columns: id, amount"),
        "{e}"
    );
}

#[tokio::test]
async fn psi_references_are_read_in_passes_numeric_and_categorical() {
    let dir = tempfile::tempdir().unwrap();
    // Numeric, with nulls and NaN in the file (both ignored), out of order.
    let mut num = String::from("amount,kind\n");
    for i in 0..1000 {
        num.push_str(&format!(
            "{}.25,{}\n",
            (i * 7) % 1000,
            if i % 4 == 0 { "b" } else { "a" }
        ));
    }
    num.push_str(",a\nNaN,a\n");
    std::fs::write(dir.path().join("ref.csv"), &num).unwrap();
    let spec = |rule: &str| -> Contract {
        let spec: ContractSpec = toml::from_str(&format!("rules = [{rule}]")).unwrap();
        Contract::from_spec("t", &spec, dir.path()).unwrap()
    };
    let psi_of = |c: Contract, b: datafusion::arrow::array::RecordBatch| async move {
        let mut ch = Checker::new("t", &c, None, T0).await.unwrap();
        ch.check(&b).unwrap();
        ch.finish().rules[0].detail.clone().unwrap()
    };
    let amounts: Vec<f64> = (0..1000).map(|i| f64::from(i) + 0.25).collect();
    let numeric = spec(r#"{ check = "psi", column = "amount", reference = "ref.csv" }"#);
    // The same distribution: every decile holds 10% on both sides.
    let same = batch(vec![(
        "amount",
        Arc::new(Float64Array::from(amounts)) as ArrayRef,
    )]);
    assert_eq!(psi_of(numeric, same).await, "psi 0.0000 (max 0.2)");
    // A shifted sample: the contract's PSI is greenbelt_drift's (numpy-linear
    // decile edges of the reference, upper-bin rule, 1e-4 floor).
    let shifted: Vec<f64> = (0..500).map(|i| f64::from(i) * 1.5 + 300.0).collect();
    let mut reference: Vec<f64> = (0..1000)
        .map(|i| f64::from((i * 7) % 1000) + 0.25)
        .collect();
    reference.sort_by(f64::total_cmp);
    let edges = greenbelt_drift::quantile_edges(&reference, 10);
    let shares = |xs: &[f64]| {
        let mut c = vec![0.0; edges.len() + 1];
        for x in xs {
            c[greenbelt_drift::bin_of(&edges, *x)] += 1.0 / xs.len() as f64;
        }
        c
    };
    let want = greenbelt_drift::psi(&shares(&reference), &shares(&shifted)).unwrap();
    let numeric = spec(r#"{ check = "psi", column = "amount", reference = "ref.csv" }"#);
    let got = psi_of(
        numeric,
        batch(vec![(
            "amount",
            Arc::new(Float64Array::from(shifted)) as ArrayRef,
        )]),
    )
    .await;
    assert_eq!(got, format!("psi {want:.4} (max 0.2)"));
    assert!(want > 0.2, "{got}");

    let kinds = |v: Vec<&str>| {
        batch(vec![(
            "kind",
            Arc::new(datafusion::arrow::array::StringArray::from(v)) as ArrayRef,
        )])
    };
    let categorical = || spec(r#"{ check = "psi", column = "kind", reference = "ref.csv" }"#);
    let three_to_one = kinds(vec!["a", "a", "a", "b", "a", "b", "a", "a"]);
    assert_eq!(
        psi_of(categorical(), three_to_one).await,
        "psi 0.0000 (max 0.2)"
    );
    let all_b = kinds(vec!["b"; 8]);
    let d = psi_of(categorical(), all_b).await;
    let v: f64 = d[4..].split(' ').next().unwrap().parse().unwrap();
    assert!(v > 1.0, "{d}");

    let missing = spec(r#"{ check = "psi", column = "nope", reference = "ref.csv" }"#);
    let e = Checker::new("t", &missing, None, T0)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"nope\" is not in the reference (columns: amount, kind)"),
        "{e}"
    );
}

/// The rules one value can break are the same for validation, push and
/// serving: `row_rules` keeps not_null/range without `mostly`, allowed and
/// regex, and `first_broken` finds the earliest offending row.
#[test]
fn row_rules_judge_single_values() {
    use greenbelt_features::contracts::{Cell, first_broken};
    let c = contract(
        r#"{ check = "not_null", column = "amount" },
           { check = "range", column = "amount", min = 0.0, max = 100.0 },
           { check = "range", column = "amount", max = 1.0, mostly = 0.5 },
           { check = "allowed", column = "kind", values = ["x", "y", 3] },
           { check = "regex", column = "id", pattern = "^a[0-9]$" },
           { check = "unique", columns = ["id"] },
           { check = "row_count", min = 10 }"#,
        "fail",
    );
    let rules = c.row_rules().unwrap();
    let labels: Vec<&str> = rules.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "not_null(amount)",
            "range(amount in [0, 100])",
            "allowed(kind)",
            "regex(id ~ ^a[0-9]$)"
        ]
    );
    let (not_null, range, allowed, regex) = (&rules[0], &rules[1], &rules[2], &rules[3]);
    assert_eq!(not_null.broken_by(Cell::Null).as_deref(), Some("null"));
    assert_eq!(
        not_null.broken_by(Cell::from_f64(f64::NAN)).as_deref(),
        Some("null")
    );
    assert_eq!(
        range.broken_by(Cell::Null),
        None,
        "only not_null judges nulls"
    );
    assert_eq!(range.broken_by(Cell::Number(100.0)), None);
    assert_eq!(range.broken_by(Cell::Number(-2.0)).as_deref(), Some("-2"));
    assert_eq!(
        range.broken_by(Cell::Number(f64::NAN)).as_deref(),
        Some("NaN")
    );
    assert_eq!(range.broken_by(Cell::Text("12")), None);
    assert_eq!(
        range.broken_by(Cell::Text("abc")).as_deref(),
        Some("not a number")
    );
    assert_eq!(allowed.broken_by(Cell::Text("y")), None);
    assert_eq!(allowed.broken_by(Cell::Number(3.0)), None);
    assert_eq!(allowed.broken_by(Cell::Text("z")).as_deref(), Some("z"));
    assert_eq!(regex.broken_by(Cell::Text("a1")), None);
    assert_eq!(regex.broken_by(Cell::Text("b4")).as_deref(), Some("b4"));

    let b = first_broken(&rules, &data()).unwrap().unwrap();
    assert_eq!(
        (b.row, b.rule.label.as_str(), b.value.as_str()),
        (1, "range(amount in [0, 100])", "-2")
    );
    let none = first_broken(&rules[2..3], &data()).unwrap().unwrap();
    assert_eq!((none.row, none.value.as_str()), (2, "z"));
}
