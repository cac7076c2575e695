//! Definitions: the fraud example parses; errors name the field and the fix.

use std::path::Path;

use greenbelt_features::Definitions;

const MINI: &str = r#"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]

[[source]]
name = "tx"
path = "tx.csv"
event_timestamp = "event_ts"

[[feature_view]]
name = "user_stats"
entities = ["user"]
source = "tx"
ttl = "1day"
features = [{ name = "amount", type = "float64" }]

[[feature_service]]
name = "svc"
features = ["user_stats:*"]
"#;

fn err(text: &str) -> String {
    Definitions::parse(text, Path::new("/base"))
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_definitions_validate() {
    let d = Definitions::parse(MINI, Path::new("/base")).unwrap();
    let v = d.view("user_stats").unwrap();
    assert_eq!(v.ttl_us, Some(86_400_000_000));
    assert_eq!(v.join_keys[0].name, "user_id");
    assert_eq!(d.sources["tx"].path, Path::new("/base/tx.csv"));
    assert_eq!(d.service("svc").unwrap().features.len(), 1);
    assert_eq!(d.offline_path, Path::new("/base/data/offline"));
}

#[test]
fn the_fraud_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud/features.toml");
    let d = Definitions::load(&path).unwrap();
    assert!(
        d.services.contains_key("fraud_model"),
        "{:?}",
        d.services.keys()
    );
    assert!(d.views.len() >= 2);
    assert!(d.views.values().any(|v| v.contract.is_some()));
}

#[test]
fn unknown_fields_are_errors_with_the_line() {
    let e = err(&MINI.replace("ttl = \"1day\"", "tll = \"1day\""));
    assert!(e.contains("tll") && e.contains("line"), "{e}");
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let e = err(&MINI.replace("source = \"tx\"", "source = \"nope\""));
    assert!(
        e.contains("feature view \"user_stats\"") && e.contains("[[source]]"),
        "{e}"
    );
    let e = err(&MINI.replace("entities = [\"user\"]", "entities = [\"usr\"]"));
    assert!(e.contains("entity \"usr\" is not defined"), "{e}");
    let e = err(&MINI.replace("ttl = \"1day\"", "ttl = \"soon\""));
    assert!(e.contains("ttl") && e.contains("30days"), "{e}");
    let e = err(&MINI.replace("user_stats:*", "user_stats:amont"));
    assert!(e.contains("amont") && e.contains("it has: amount"), "{e}");
    let e = err(&MINI.replace(
        "\"float64\" }]\n",
        "\"float64\" }, { name = \"user_id\", type = \"string\" }]\n",
    ));
    assert!(e.contains("join key"), "{e}");
    let e = err(&MINI.replace("path = \"tx.csv\"", "path = \"tx.txt\""));
    assert!(e.contains("format = "), "{e}");
    let bad_rule = MINI.replace(
        "features = [{ name = \"amount\", type = \"float64\" }]",
        "features = [{ name = \"amount\", type = \"float64\" }]\ncontract = { rules = [{ check = \"not_null\", column = \"amount\", mostly = 2.0 }] }",
    );
    let e = err(&bad_rule);
    assert!(
        e.contains("mostly must be between 0 and 1") && e.contains("not_null(amount)"),
        "{e}"
    );
    let bad_check = MINI.replace(
        "features = [{ name = \"amount\", type = \"float64\" }]",
        "features = [{ name = \"amount\", type = \"float64\" }]\ncontract = { rules = [{ check = \"not_nul\", column = \"amount\" }] }",
    );
    let e = err(&bad_check);
    assert!(e.contains("not_nul"), "{e}");
}

#[test]
fn fallbacks_defaults_and_breaker_settings_validate_with_the_field_named() {
    use greenbelt_features::defs::Fallback;
    let with = |svc_extra: &str, feat_extra: &str, store: &str| {
        MINI.replace(
            "features = [{ name = \"amount\", type = \"float64\" }]",
            &format!("features = [{{ name = \"amount\", type = \"float64\"{feat_extra} }}]"),
        )
        .replace(
            "features = [\"user_stats:*\"]",
            &format!("features = [\"user_stats:*\"]\n{svc_extra}"),
        ) + store
    };
    let ok = Definitions::parse(
        &with(
            "fallback = \"last_value\"\nfallback_max_age = \"10m\"",
            ", default = 0.0",
            "[store]\nonline_timeout = \"50ms\"\n[store.online_breaker]\nwait_duration_in_open = \"2s\"\n",
        ),
        Path::new("/base"),
    )
    .unwrap();
    let s = ok.service("svc").unwrap();
    assert_eq!(s.fallback, Fallback::LastValue);
    assert_eq!(
        s.fallback_max_age,
        Some(std::time::Duration::from_secs(600))
    );
    assert_eq!(ok.online.timeout, std::time::Duration::from_millis(50));
    assert_eq!(
        ok.online.breaker.wait_duration_in_open,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(
        ok.view("user_stats").unwrap().features[0].default,
        Some(serde_json::json!(0.0))
    );
    // The default is `error`.
    let plain = Definitions::parse(MINI, Path::new("/base")).unwrap();
    assert_eq!(plain.service("svc").unwrap().fallback, Fallback::Error);

    let e = err(&with("fallback = \"default\"", "", ""));
    assert!(
        e.contains("fallback = \"default\"") && e.contains("\"user_stats:amount\" has no default"),
        "{e}"
    );
    let e = err(&with("", ", default = \"zero\"", ""));
    assert!(e.contains("default = \"zero\" is not a float64"), "{e}");
    let e = err(&with("fallback = \"stale\"", "", ""));
    assert!(
        e.contains("unknown variant") && e.contains("last_value"),
        "{e}"
    );
    let e = err(&with("fallback_max_age = \"1h\"", "", ""));
    assert!(e.contains("fallback_max_age is only for"), "{e}");
    let e = err(&with(
        "",
        "",
        "[store.online_breaker]\nfailure_rate_threshold = 150.0\n",
    ));
    assert!(
        e.contains("[store.online_breaker] failure_rate_threshold = 150"),
        "{e}"
    );
    let e = err(&with("", "", "[store.online_breaker]\nwindow = 5\n"));
    assert!(e.contains("unknown field `window`"), "{e}");
    let e = err(&with("", "", "[store]\nonline_timeout = \"soon\"\n"));
    assert!(e.contains("[store] online_timeout"), "{e}");
}
