use std::path::{Path, PathBuf};

use greenbelt_core::{DataType, Tensor, TensorData};
use greenbelt_runtime::{Backend, LoadOptions, RuntimeError, Runtimes};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

struct Golden {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    signature: Value,
}

fn tensors(list: &Value) -> Vec<Tensor> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let name = t["name"].as_str().unwrap();
            let dt: DataType = t["datatype"].as_str().unwrap().parse().unwrap();
            let shape: Vec<i64> = serde_json::from_value(t["shape"].clone()).unwrap();
            let data = greenbelt_core::json::decode(name, dt, &t["data"]).unwrap();
            Tensor::new(name, shape, data).unwrap()
        })
        .collect()
}

fn golden(name: &str, version: u32) -> Golden {
    let path = fixtures().join(format!("golden/{name}_v{version}.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    Golden {
        inputs: tensors(&v["inputs"]),
        outputs: tensors(&v["outputs"]),
        signature: v["signature"].clone(),
    }
}

fn model_path(name: &str, version: u32) -> PathBuf {
    fixtures().join(format!("models/{name}/{version}/model.onnx"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 + 1e-5 * b.abs() || (a.is_nan() && b.is_nan())
}

/// Compare outputs: floats within tolerance, everything else exactly.
pub fn assert_matches(what: &str, got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len(), "{what}: output count");
    for w in want {
        let g = got
            .iter()
            .find(|g| g.name == w.name)
            .unwrap_or_else(|| panic!("{what}: no output {}", w.name));
        assert_eq!(g.shape, w.shape, "{what}: shape of {}", w.name);
        let ok = match (&g.data, &w.data) {
            (TensorData::Fp32(a), TensorData::Fp32(b)) => {
                a.iter().zip(b).all(|(x, y)| close(*x as f64, *y as f64))
            }
            (TensorData::Fp64(a), TensorData::Fp64(b)) => {
                a.iter().zip(b).all(|(x, y)| close(*x, *y))
            }
            (TensorData::Fp16(a), TensorData::Fp16(b)) => {
                a.iter().zip(b).all(|(x, y)| close(x.to_f64(), y.to_f64()))
            }
            (a, b) => a == b,
        };
        assert!(
            ok,
            "{what}: output {} differs\n got {:?}\nwant {:?}",
            w.name, g.data, w.data
        );
    }
}

fn ort() -> Option<Runtimes> {
    let rt = Runtimes::probe(None);
    if rt.onnxruntime.is_none() {
        eprintln!(
            "SKIP onnxruntime golden tests: {} (set ORT_DYLIB_PATH to libonnxruntime.so >= 1.31)",
            rt.onnxruntime_missing.as_deref().unwrap_or("not found")
        );
        return None;
    }
    Some(rt)
}

fn tract_only() -> Runtimes {
    Runtimes {
        onnxruntime: None,
        onnxruntime_missing: Some("disabled for this test".into()),
    }
}

fn opts(backend: Backend) -> LoadOptions {
    LoadOptions {
        backend,
        ..LoadOptions::default()
    }
}

const ALL: &[(&str, u32)] = &[
    ("logreg", 1),
    ("logreg", 2),
    ("mlp", 1),
    ("multi_io", 1),
    ("dtypes", 1),
    ("forest", 1),
    ("logreg_zipmap", 1),
];

#[test]
fn onnxruntime_matches_python_onnxruntime_on_every_fixture() {
    let Some(rt) = ort() else { return };
    for (name, version) in ALL {
        let g = golden(name, *version);
        let model = rt
            .load(&model_path(name, *version), &opts(Backend::Onnxruntime))
            .unwrap();
        assert_eq!(model.backend(), Backend::Onnxruntime);
        let out = model.infer(&g.inputs).unwrap();
        assert_matches(&format!("onnxruntime {name}/{version}"), &out, &g.outputs);
        // Signature read from the graph matches what Python onnxruntime reports.
        for (spec, want) in model
            .signature()
            .inputs
            .iter()
            .zip(g.signature["inputs"].as_array().unwrap())
        {
            assert_eq!(spec.name, want["name"].as_str().unwrap());
            assert_eq!(spec.datatype.as_str(), want["datatype"].as_str().unwrap());
            assert_eq!(serde_json::to_value(&spec.shape).unwrap(), want["shape"]);
        }
    }
}

#[test]
fn onnxruntime_runs_several_instances_concurrently() {
    let Some(rt) = ort() else { return };
    let g = golden("logreg", 1);
    let model = rt
        .load(
            &model_path("logreg", 1),
            &LoadOptions {
                backend: Backend::Onnxruntime,
                intra_op_threads: 1,
                instances: 2,
                ..LoadOptions::default()
            },
        )
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_matches("concurrent", &model.infer(&g.inputs).unwrap(), &g.outputs);
                }
            });
        }
    });
}

#[test]
fn onnxruntime_session_pool_grows_and_shrinks_while_calls_run() {
    let Some(rt) = ort() else { return };
    let g = golden("logreg", 1);
    let model = rt
        .load(
            &model_path("logreg", 1),
            &LoadOptions {
                backend: Backend::Onnxruntime,
                intra_op_threads: 1,
                instances: 1,
                ..LoadOptions::default()
            },
        )
        .unwrap();
    assert_eq!(model.instances(), Some(1));
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    // Let the callers make `n` more calls, waiting at most ~10 s (plain
    // threads, no async runtime here: counted 1 ms naps, not a clock).
    let wait_for_calls = |n: usize| {
        let want = calls.load(Ordering::SeqCst) + n;
        for _ in 0..10_000 {
            if calls.load(Ordering::SeqCst) >= want {
                return;
            }
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("callers stalled");
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    assert_matches("resizing", &model.infer(&g.inputs).unwrap(), &g.outputs);
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // Up to 4, down to 1 (waiting for the retired sessions' calls),
        // up to 3 again, all under load; every answer stays exact.
        wait_for_calls(20);
        for n in [4, 1, 3, 2] {
            assert_eq!(model.set_instances(n).unwrap(), Some(n));
            assert_eq!(model.instances(), Some(n));
            wait_for_calls(20);
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Clamped to the pool's bounds.
    assert_eq!(model.set_instances(0).unwrap(), Some(1));
    assert_eq!(
        model
            .set_instances(greenbelt_runtime::MAX_INSTANCES + 5)
            .unwrap(),
        Some(greenbelt_runtime::MAX_INSTANCES)
    );
    assert_eq!(model.set_instances(1).unwrap(), Some(1));
    // Backends without a pool say so.
    let tract = Runtimes::default()
        .load(&model_path("logreg", 1), &opts(Backend::Tract))
        .unwrap();
    assert_eq!(tract.instances(), None);
    assert_eq!(tract.set_instances(3).unwrap(), None);
}

#[test]
fn tract_matches_on_linear_mlp_and_plain_graphs() {
    let rt = tract_only();
    for (name, version) in [("logreg", 1), ("logreg", 2), ("mlp", 1), ("multi_io", 1)] {
        let g = golden(name, version);
        let model = rt
            .load(&model_path(name, version), &opts(Backend::Tract))
            .unwrap();
        assert_eq!(model.backend(), Backend::Tract);
        let out = model.infer(&g.inputs).unwrap();
        assert_matches(&format!("tract {name}/{version}"), &out, &g.outputs);
        let sig = model.signature();
        assert_eq!(
            sig.inputs.len(),
            g.signature["inputs"].as_array().unwrap().len()
        );
        assert!(
            sig.inputs.iter().all(|s| s.shape.first() == Some(&-1)),
            "{name}: batch dim is dynamic: {sig:?}"
        );
    }
}

#[test]
fn auto_prefers_the_native_engine_then_onnxruntime_then_tract() {
    let rt = tract_only();
    // Tabular graphs: the native engine, equal to ONNX Runtime's goldens.
    for (name, version) in [
        ("logreg", 1),
        ("logreg", 2),
        ("forest", 1),
        ("logreg_zipmap", 1),
        ("mlp", 1),
    ] {
        let g = golden(name, version);
        let model = rt
            .load(&model_path(name, version), &opts(Backend::Auto))
            .unwrap();
        assert_eq!(model.backend(), Backend::Native, "{name}");
        assert_eq!(model.backend().platform(), "greenbelt_native_onnx");
        let out = model.infer(&g.inputs).unwrap();
        assert_matches(&format!("native {name}/{version}"), &out, &g.outputs);
    }
    // A graph with an operator the native engine leaves alone (Greater):
    // tract, which runs the standard domain.
    let model = rt
        .load(&model_path("multi_io", 1), &opts(Backend::Auto))
        .unwrap();
    assert_eq!(model.backend(), Backend::Tract);
    // With ONNX Runtime available, that graph goes to ONNX Runtime instead,
    // and so does the MLP (MatMul layers: ONNX Runtime's GEMM wins at batch
    // sizes a batcher builds); trees stay native.
    if let Some(ort) = ort() {
        for (name, want) in [
            ("multi_io", Backend::Onnxruntime),
            ("mlp", Backend::Onnxruntime),
            ("forest", Backend::Native),
            ("logreg", Backend::Native),
        ] {
            let model = ort
                .load(&model_path(name, 1), &opts(Backend::Auto))
                .unwrap();
            assert_eq!(model.backend(), want, "{name}");
        }
    }
    // Explicitly asking for the native engine on a graph it does not run
    // names the operator.
    let err = rt
        .load(&model_path("multi_io", 1), &opts(Backend::Native))
        .err()
        .unwrap();
    match &err {
        RuntimeError::UnsupportedOperator { operator, .. } => assert_eq!(operator, "Greater"),
        other => panic!("expected UnsupportedOperator, got {other}"),
    }
    // An ONNX-ML operator neither the native engine nor tract runs exactly,
    // without ONNX Runtime: refused, naming it and the remedy.
    let dir = std::env::temp_dir().join(format!("gb-svm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svm = dir.join("model.onnx");
    std::fs::write(&svm, svm_model()).unwrap();
    match rt.load(&svm, &opts(Backend::Auto)).err().unwrap() {
        RuntimeError::UnsupportedOperator {
            operator, remedy, ..
        } => {
            assert_eq!(operator, "SVMRegressor");
            assert!(remedy.contains("pip install onnxruntime"), "{remedy}");
        }
        other => panic!("expected UnsupportedOperator, got {other}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Explicitly asking for ONNX Runtime without it is a clear error, not a panic.
    let err = rt
        .load(&model_path("logreg", 1), &opts(Backend::Onnxruntime))
        .err()
        .unwrap();
    assert!(matches!(err, RuntimeError::LibraryUnavailable(_)), "{err}");
}

/// A one-node `SVMRegressor` (linear kernel) over a float [N, 2] input.
fn svm_model() -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb;
    let float_tensor =
        |name: &str, dims: Vec<pb::tensor_shape_proto::Dimension>| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim: dims }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
    let dim = |v: Option<i64>| pb::tensor_shape_proto::Dimension {
        value: Some(match v {
            Some(v) => pb::tensor_shape_proto::dimension::Value::DimValue(v),
            None => pb::tensor_shape_proto::dimension::Value::DimParam("N".into()),
        }),
        ..Default::default()
    };
    let attr_floats = |name: &str, v: Vec<f32>| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Floats as i32,
        floats: v,
        ..Default::default()
    };
    let attr_int = |name: &str, v: i64| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    };
    let node = pb::NodeProto {
        input: vec!["X".into()],
        output: vec!["Y".into()],
        op_type: "SVMRegressor".into(),
        domain: "ai.onnx.ml".into(),
        attribute: vec![
            attr_floats("coefficients", vec![1.0, -1.0]),
            attr_floats("support_vectors", vec![1.0, 0.0, 0.0, 1.0]),
            attr_floats("rho", vec![0.5]),
            attr_int("n_supports", 2),
        ],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            },
            pb::OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 1,
            },
        ],
        graph: Some(pb::GraphProto {
            node: vec![node],
            name: "svm".into(),
            input: vec![float_tensor("X", vec![dim(None), dim(Some(2))])],
            output: vec![float_tensor("Y", vec![dim(None), dim(Some(1))])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}

#[test]
fn missing_and_corrupt_files_are_load_errors() {
    let rt = tract_only();
    let err = rt
        .load(Path::new("/nonexistent/model.onnx"), &opts(Backend::Tract))
        .err()
        .unwrap();
    assert!(err.to_string().contains("file not found"), "{err}");
    let dir = std::env::temp_dir().join(format!("gb-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("model.onnx");
    std::fs::write(&bad, b"this is not an onnx model").unwrap();
    for backend in [Backend::Tract, Backend::Auto] {
        let err = rt.load(&bad, &opts(backend)).err().unwrap();
        assert!(matches!(err, RuntimeError::Load { .. }), "{err}");
    }
    if let Some(ort) = ort() {
        let err = ort.load(&bad, &opts(Backend::Onnxruntime)).err().unwrap();
        assert!(matches!(err, RuntimeError::Load { .. }), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_library_path_is_a_clear_error() {
    let err = greenbelt_runtime::onnxruntime::OrtRuntime::init(Some(Path::new(
        "/nonexistent/libonnxruntime.so",
    )))
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
}

#[test]
fn bytes_that_are_not_utf8_are_input_errors() {
    let rt = tract_only();
    let g = golden("dtypes", 1);
    let Ok(model) = rt.load(&model_path("dtypes", 1), &opts(Backend::Tract)) else {
        eprintln!("tract cannot load dtypes; covered by the onnxruntime test");
        return;
    };
    let mut inputs = g.inputs.clone();
    for t in &mut inputs {
        if let TensorData::Bytes(v) = &mut t.data {
            v[0] = bytes::Bytes::from_static(&[0xff, 0xfe]);
        }
    }
    let err = model.infer(&inputs).err().unwrap();
    assert!(matches!(err, RuntimeError::Input(_)), "{err}");
}
