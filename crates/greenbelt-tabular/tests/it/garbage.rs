//! Files and inputs that are not what the engine expects: clear errors,
//! never a panic.

use std::path::Path;

use greenbelt_core::{Tensor, TensorData};
use greenbelt_tabular::{EngineError, NativeModel};

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn garbage_and_truncated_files_are_load_errors() {
    for bytes in [
        b"this is not an onnx model".to_vec(),
        vec![0xff; 64],
        Vec::new(),
    ] {
        assert!(
            matches!(NativeModel::from_bytes(&bytes), Err(EngineError::Load(_))),
            "{bytes:?}"
        );
    }
    let forest = fixture("models/forest/1/model.onnx");
    for cut in [1, 10, forest.len() / 3, forest.len() / 2, forest.len() - 1] {
        // A cut protobuf is either unreadable or a graph missing its parts:
        // an error either way, no panic.
        assert!(
            NativeModel::from_bytes(&forest[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn inputs_of_the_wrong_name_type_or_width_are_errors() {
    let m = NativeModel::from_bytes(&fixture("models/forest/1/model.onnx")).unwrap();
    let rows = |name: &str, cols: usize, data: TensorData| Tensor {
        name: name.into(),
        shape: vec![1, cols as i64],
        data,
    };
    let err = m
        .infer(&[rows("other", 20, TensorData::Fp32(vec![0.0; 20]))])
        .unwrap_err();
    assert!(err.to_string().contains("\"input\" is missing"), "{err}");
    let err = m
        .infer(&[rows("input", 20, TensorData::Int8(vec![0; 20]))])
        .unwrap_err();
    assert!(matches!(err, EngineError::Input(_)), "{err}");
    // Fewer features than the trees read: an error naming the feature.
    let err = m
        .infer(&[rows("input", 3, TensorData::Fp32(vec![0.0; 3]))])
        .unwrap_err();
    assert!(
        err.to_string().contains("the input has 3 features"),
        "{err}"
    );
    // A rank the operator does not take.
    let err = m
        .infer(&[Tensor {
            name: "input".into(),
            shape: vec![1, 4, 5],
            data: TensorData::Fp32(vec![0.0; 20]),
        }])
        .unwrap_err();
    assert!(err.to_string().contains("1-D or 2-D"), "{err}");
}
