use std::path::{Path, PathBuf};

use bytes::Bytes;
use greenbelt_core::{Tensor, TensorData};
use greenbelt_tabular::{EngineError, NativeModel};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The text of a golden file with every number turned into a string, so
/// that floats are parsed by `str::parse` (correctly rounded) rather than by
/// serde_json's default parser, which can be one ulp off: a test input that
/// sits exactly on a split threshold must arrive exactly.
fn quote_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '-' || c.is_ascii_digit() {
            out.push('"');
            out.push(c);
            while let Some(n) = chars.peek().copied() {
                if n.is_ascii_digit() || matches!(n, '.' | 'e' | 'E' | '+' | '-') {
                    out.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push('"');
        } else {
            out.push(c);
        }
    }
    out
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// A float from a golden file: a number, or "NaN" / "Infinity" / "-Infinity".
fn float(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => match s.as_str() {
            "Infinity" | "inf" => f64::INFINITY,
            "-Infinity" | "-inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or(f64::NAN),
        },
        Value::Bool(b) => f64::from(u8::from(*b)),
        _ => f64::NAN,
    }
}

fn flat(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        other => vec![other.clone()],
    }
}

fn tensor(t: &Value) -> Option<Tensor> {
    let name = t["name"].as_str()?.to_string();
    let shape: Vec<i64> = t["shape"].as_array()?.iter().filter_map(int).collect();
    let data = flat(&t["data"]);
    let data = match t["datatype"].as_str()? {
        "FP32" => TensorData::Fp32(data.iter().map(|v| float(v) as f32).collect()),
        "FP64" => TensorData::Fp64(data.iter().map(float).collect()),
        "INT64" => TensorData::Int64(data.iter().filter_map(int).collect()),
        "INT32" => TensorData::Int32(
            data.iter()
                .filter_map(|v| int(v).map(|x| x as i32))
                .collect(),
        ),
        "BOOL" => TensorData::Bool(
            data.iter()
                .map(|v| v.as_bool().unwrap_or(float(v) != 0.0))
                .collect(),
        ),
        "BYTES" => TensorData::Bytes(
            data.iter()
                .map(|v| Bytes::from(v.as_str().unwrap_or_default().to_string()))
                .collect(),
        ),
        // A ZipMap output: rows of probabilities in the order of "keys";
        // the engine returns the columns in sorted key order.
        "ZIPMAP" => {
            let keys = t["keys"].as_array()?;
            let mut order: Vec<usize> = (0..keys.len()).collect();
            if keys.iter().all(|k| int(k).is_some()) {
                order.sort_by_key(|i| int(&keys[*i]));
            } else {
                order.sort_by_key(|i| keys[*i].as_str().map(str::to_string));
            }
            let rows = t["data"].as_array()?;
            let mut out = Vec::new();
            for r in rows {
                let r = r.as_array()?;
                out.extend(order.iter().map(|j| float(&r[*j]) as f32));
            }
            return Some(Tensor {
                name,
                shape: vec![rows.len() as i64, keys.len() as i64],
                data: TensorData::Fp32(out),
            });
        }
        other => {
            let dt: greenbelt_core::DataType = other.parse().ok()?;
            greenbelt_core::json::decode(&name, dt, &t["data"]).ok()?
        }
    };
    Some(Tensor { name, shape, data })
}

/// |a - b| ≤ 1e-6 · max(1, |b|), NaN equal to NaN, infinities equal.
fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// Compare one model's outputs; returns the worst float difference.
fn compare(what: &str, got: &[Tensor], want: &[Tensor]) -> Result<f64, String> {
    let mut worst = 0f64;
    for w in want {
        let g = got
            .iter()
            .find(|g| g.name == w.name)
            .ok_or_else(|| format!("{what}: no output {}", w.name))?;
        if g.shape != w.shape {
            return Err(format!(
                "{what}: output {} has shape {:?}, want {:?}",
                w.name, g.shape, w.shape
            ));
        }
        let floats = |d: &TensorData| -> Option<Vec<f64>> {
            match d {
                TensorData::Fp32(v) => Some(v.iter().map(|x| f64::from(*x)).collect()),
                TensorData::Fp64(v) => Some(v.clone()),
                _ => None,
            }
        };
        match (floats(&g.data), floats(&w.data)) {
            (Some(a), Some(b)) => {
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    if !close(*x, *y) {
                        return Err(format!(
                            "{what}: output {} element {i}: got {x}, ONNX Runtime {y}",
                            w.name
                        ));
                    }
                    if x.is_finite() && y.is_finite() {
                        worst = worst.max((x - y).abs() / y.abs().max(1.0));
                    }
                }
                if g.data.datatype() != w.data.datatype() {
                    return Err(format!(
                        "{what}: output {} is {}, want {}",
                        w.name,
                        g.data.datatype(),
                        w.data.datatype()
                    ));
                }
            }
            _ => {
                if g.data != w.data {
                    let diff = match (&g.data, &w.data) {
                        (TensorData::Int64(a), TensorData::Int64(b)) => a
                            .iter()
                            .zip(b)
                            .position(|(x, y)| x != y)
                            .map(|i| format!("element {i}: got {}, want {}", a[i], b[i])),
                        _ => None,
                    };
                    return Err(format!(
                        "{what}: output {} differs ({})",
                        w.name,
                        diff.unwrap_or_else(|| format!(
                            "{:?} vs {:?}",
                            g.data.datatype(),
                            w.data.datatype()
                        ))
                    ));
                }
            }
        }
    }
    Ok(worst)
}

struct Case {
    name: String,
    model: PathBuf,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// Every golden file of `dir`: `model(stem, json)` names its model file;
/// `exact` parses the numbers exactly (see [`quote_numbers`]).
fn cases(dir: &str, exact: bool, model: impl Fn(&str, &Value) -> PathBuf) -> Vec<Case> {
    let Ok(rd) = std::fs::read_dir(fixtures().join(dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let text = std::fs::read_to_string(&p).unwrap();
        let text = if exact { quote_numbers(&text) } else { text };
        let v: Value = serde_json::from_str(&text).unwrap();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let list = |key: &str| -> Vec<Tensor> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(tensor)
                .collect()
        };
        out.push(Case {
            model: model(&name, &v),
            inputs: list("inputs"),
            outputs: list("outputs"),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn serving_cases() -> Vec<Case> {
    cases("golden", false, |stem, _| {
        let (name, version) = stem.rsplit_once("_v").unwrap();
        fixtures().join(format!("models/{name}/{version}/model.onnx"))
    })
}

fn tabular_cases() -> Vec<Case> {
    cases("tabular/golden", true, |_, v| {
        fixtures()
            .join("tabular/models")
            .join(v["model"].as_str().unwrap())
    })
}

/// Run every case; models the engine refuses are listed, not failed, unless
/// they are in `must_run`.
fn run_cases(cases: Vec<Case>, must_refuse: &[&str]) {
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for c in &cases {
        match NativeModel::load(&c.model) {
            Err(EngineError::Unsupported { op, why, .. }) => {
                if !must_refuse.contains(&c.name.as_str()) {
                    failures.push(format!("{}: refused: {op}: {why}", c.name));
                }
                report.push(format!("{:<32} refused ({op})", c.name));
            }
            Err(e) => failures.push(format!("{}: load error: {e}", c.name)),
            Ok(m) => {
                if must_refuse.contains(&c.name.as_str()) {
                    failures.push(format!(
                        "{}: expected a refusal, the engine loaded it",
                        c.name
                    ));
                }
                match m.infer(&c.inputs) {
                    Err(e) => failures.push(format!("{}: {e}", c.name)),
                    Ok(got) => match compare(&c.name, &got, &c.outputs) {
                        Ok(worst) => report.push(format!(
                            "{:<32} exact (worst relative difference {worst:.1e})",
                            c.name
                        )),
                        Err(e) => failures.push(e),
                    },
                }
            }
        }
    }
    for r in &report {
        eprintln!("{r}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} models failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn equal_to_onnx_runtime_on_the_serving_fixtures() {
    // multi_io uses Greater, which the engine leaves to ONNX Runtime.
    run_cases(serving_cases(), &["multi_io_v1"]);
}

#[test]
fn equal_to_onnx_runtime_on_the_tabular_test_set() {
    let cases = tabular_cases();
    if cases.is_empty() {
        panic!("fixtures/tabular/golden is empty: run bash fixtures/tabular/generate.sh");
    }
    run_cases(cases, &[]);
}

/// A batch walks each tree several rows in lockstep; a single row takes the
/// plain walk. Every model of the test set (the tree ensembles with NaN and
/// threshold-edge inputs among them) must give the same bits both ways.
#[test]
fn a_batch_scores_exactly_as_its_rows_one_at_a_time() {
    let cases = tabular_cases();
    assert!(!cases.is_empty(), "fixtures/tabular/golden is empty");
    let bits = |t: &Tensor| format!("{:?} {:?}", t.shape, t.data);
    for c in &cases {
        let Ok(m) = NativeModel::load(&c.model) else {
            continue;
        };
        let batch = m.infer(&c.inputs).unwrap();
        let rows = c.inputs[0].rows();
        assert!(
            rows > 8,
            "{}: too few rows to fill the lockstep lanes",
            c.name
        );
        let one_by_one: Vec<Vec<Tensor>> = (0..rows)
            .map(|r| {
                let row: Vec<Tensor> = c
                    .inputs
                    .iter()
                    .map(|t| {
                        let mut parts = t.split(&[r, 1, rows - r - 1]).unwrap();
                        parts.swap_remove(1)
                    })
                    .collect();
                m.infer(&row).unwrap()
            })
            .collect();
        for (i, out) in batch.iter().enumerate() {
            let parts: Vec<&Tensor> = one_by_one.iter().map(|o| &o[i]).collect();
            let joined = Tensor::concat(&parts).unwrap();
            assert_eq!(bits(out), bits(&joined), "{}: output {}", c.name, out.name);
        }
    }
}
