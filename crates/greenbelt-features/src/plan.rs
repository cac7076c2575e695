//! `plan` and `apply` support: each definition as canonical JSON (what the
//! registry records, versioned), and the difference between the file and
//! what was last applied. A change to the schema of a definition (join keys,
//! entities, features and their types, timestamps) is flagged as breaking;
//! the registry records every change as a new version. Storage is the
//! registry's; this module only computes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::defs::Definitions;
use crate::error::{FeatureError, Result};

/// One definition as recorded: kind (`entity`, `source`, `feature_view`,
/// `feature_service`), name and spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionSpec {
    pub kind: String,
    pub name: String,
    pub spec: Value,
}

fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| FeatureError::Data(format!("definition as JSON: {e}")))
}

/// Every definition of the file, as recorded specs.
pub fn specs(defs: &Definitions) -> Result<Vec<DefinitionSpec>> {
    let mut out = Vec::new();
    for e in &defs.spec.entities {
        out.push(DefinitionSpec {
            kind: "entity".into(),
            name: e.name.clone(),
            spec: to_json(e)?,
        });
    }
    for s in &defs.spec.sources {
        out.push(DefinitionSpec {
            kind: "source".into(),
            name: s.name.clone(),
            spec: to_json(s)?,
        });
    }
    for v in &defs.spec.feature_views {
        out.push(DefinitionSpec {
            kind: "feature_view".into(),
            name: v.name.clone(),
            spec: to_json(v)?,
        });
    }
    for s in &defs.spec.feature_services {
        out.push(DefinitionSpec {
            kind: "feature_service".into(),
            name: s.name.clone(),
            spec: to_json(s)?,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Add,
    Change,
    Remove,
    Unchanged,
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub kind: String,
    pub name: String,
    pub action: Action,
    /// The version applied now (None for new definitions).
    pub current_version: Option<i64>,
    /// Top-level fields that differ.
    pub changed_fields: Vec<String>,
    /// The change alters a schema (keys, features, types, timestamps).
    pub breaking: bool,
}

const SCHEMA_FIELDS: &[&str] = &[
    "join_keys",
    "entities",
    "features",
    "event_timestamp",
    "created_timestamp",
    "transformation",
    "source",
];

/// The plan: `applied` maps (kind, name) → (version, spec; `Value::Null` for
/// a removed definition).
pub fn plan(
    wanted: &[DefinitionSpec],
    applied: &BTreeMap<(String, String), (i64, Value)>,
) -> Vec<PlanEntry> {
    let mut out = Vec::new();
    for d in wanted {
        let key = (d.kind.clone(), d.name.clone());
        match applied.get(&key) {
            None | Some((_, Value::Null)) => out.push(PlanEntry {
                kind: d.kind.clone(),
                name: d.name.clone(),
                action: Action::Add,
                current_version: applied.get(&key).map(|(v, _)| *v),
                changed_fields: Vec::new(),
                breaking: false,
            }),
            Some((v, old)) if old == &d.spec => out.push(PlanEntry {
                kind: d.kind.clone(),
                name: d.name.clone(),
                action: Action::Unchanged,
                current_version: Some(*v),
                changed_fields: Vec::new(),
                breaking: false,
            }),
            Some((v, old)) => {
                let empty = serde_json::Map::new();
                let a = old.as_object().unwrap_or(&empty);
                let b = d.spec.as_object().unwrap_or(&empty);
                let mut fields: Vec<String> = a
                    .keys()
                    .chain(b.keys())
                    .filter(|k| a.get(*k) != b.get(*k))
                    .cloned()
                    .collect();
                fields.sort();
                fields.dedup();
                let breaking = fields.iter().any(|f| SCHEMA_FIELDS.contains(&f.as_str()));
                out.push(PlanEntry {
                    kind: d.kind.clone(),
                    name: d.name.clone(),
                    action: Action::Change,
                    current_version: Some(*v),
                    changed_fields: fields,
                    breaking,
                });
            }
        }
    }
    for ((kind, name), (v, spec)) in applied {
        if spec.is_null() || wanted.iter().any(|d| d.kind == *kind && d.name == *name) {
            continue;
        }
        out.push(PlanEntry {
            kind: kind.clone(),
            name: name.clone(),
            action: Action::Remove,
            current_version: Some(*v),
            changed_fields: Vec::new(),
            breaking: true,
        });
    }
    out
}

/// The plan as text for people.
pub fn plan_text(entries: &[PlanEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let sign = match e.action {
            Action::Add => "+",
            Action::Change => "~",
            Action::Remove => "-",
            Action::Unchanged => " ",
        };
        out.push_str(&format!("{sign} {} \"{}\"", e.kind, e.name));
        if let Some(v) = e.current_version {
            out.push_str(&format!(" (v{v}"));
            if e.action == Action::Change || e.action == Action::Add {
                out.push_str(&format!(" -> v{}", v + 1));
            }
            out.push(')');
        }
        if !e.changed_fields.is_empty() {
            out.push_str(&format!(": {}", e.changed_fields.join(", ")));
        }
        if e.breaking {
            out.push_str("  [schema change: new version]");
        }
        out.push('\n');
    }
    let n = |a: Action| entries.iter().filter(|e| e.action == a).count();
    out.push_str(&format!(
        "{} to add, {} to change, {} to remove, {} unchanged\n",
        n(Action::Add),
        n(Action::Change),
        n(Action::Remove),
        n(Action::Unchanged)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plan_shows_adds_changes_removals() {
        let wanted = vec![
            DefinitionSpec {
                kind: "entity".into(),
                name: "user".into(),
                spec: json!({"name":"user","join_keys":[1]}),
            },
            DefinitionSpec {
                kind: "feature_view".into(),
                name: "v".into(),
                spec: json!({"name":"v","ttl":"2d","features":[1]}),
            },
            DefinitionSpec {
                kind: "feature_view".into(),
                name: "w".into(),
                spec: json!({"name":"w","features":[2]}),
            },
        ];
        let mut applied = BTreeMap::new();
        applied.insert(
            ("entity".to_string(), "user".to_string()),
            (1, json!({"name":"user","join_keys":[1]})),
        );
        applied.insert(
            ("feature_view".to_string(), "v".to_string()),
            (2, json!({"name":"v","ttl":"1d","features":[1]})),
        );
        applied.insert(
            ("feature_view".to_string(), "w".to_string()),
            (1, json!({"name":"w","features":[1]})),
        );
        applied.insert(
            ("feature_view".to_string(), "gone".to_string()),
            (3, json!({"name":"gone"})),
        );
        let p = plan(&wanted, &applied);
        let find = |n: &str| p.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(find("user").action, Action::Unchanged);
        assert_eq!(find("v").action, Action::Change);
        assert_eq!(find("v").changed_fields, vec!["ttl"]);
        assert!(!find("v").breaking);
        assert!(find("w").breaking, "a feature change is a schema change");
        assert_eq!(find("gone").action, Action::Remove);
        let text = plan_text(&p);
        assert!(
            text.contains("~ feature_view \"v\" (v2 -> v3): ttl"),
            "{text}"
        );
        assert!(
            text.contains("1 to change") || text.contains("2 to change"),
            "{text}"
        );
    }
}
