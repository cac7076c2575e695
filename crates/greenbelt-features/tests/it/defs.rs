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
