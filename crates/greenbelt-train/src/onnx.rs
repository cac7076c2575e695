//! Export of trained models as ONNX files that follow the repository's
//! classifier convention: input `input` FP32 `[N, F]` (N dynamic), outputs
//! `label` INT64 `[N]` and `probabilities` FP32 `[N, 2]` (class 0, class 1);
//! regressors have the one output `prediction` FP32 `[N, 1]`.
//!
//! - Logistic regression is one `ai.onnx.ml.LinearClassifier` (two-class
//!   coefficients `-w, w`, post-transform `LOGISTIC`), the form scikit-learn's
//!   converter writes; both ONNX Runtime and tract run it.
//! - Boosted trees are `ai.onnx.ml.TreeEnsembleRegressor` (raw score, base
//!   value included) followed by `Sigmoid`, `1 - p`, `Concat` and `ArgMax`.
//!   tract cannot load tree ensembles, so these need ONNX Runtime.
//! - Linear regression is one `ai.onnx.ml.LinearRegressor`; boosted trees
//!   for regression are the `TreeEnsembleRegressor` alone (no sigmoid).
//!
//! Files are byte-deterministic: IR version 7, opsets `{"": 13,
//! "ai.onnx.ml": 1}`, fixed graph and node names, no timestamps. The model's
//! `doc_string` and `metadata_props` record the trainer, its parameters (JSON)
//! and the feature names. Weights are stored as `f32`, as ONNX attributes are.

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{self, Tensor as TensorTypeProto};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::error::TrainError;
use crate::gbdt::{GbdtModel, Node, Objective};
use crate::linreg::LinRegModel;
use crate::logreg::LogRegModel;

/// IR version 7 with opset 13: what scikit-learn's converter writes, and what
/// the repository's fixtures (and so both runtimes) are tested with.
pub const IR_VERSION: i64 = 7;
pub const OPSET: i64 = 13;
pub const ML_OPSET: i64 = 1;
pub const PRODUCER: &str = "greenbelt-train";

/// Metadata keys written into every exported model.
pub const META_TRAINER: &str = "greenbelt.trainer";
pub const META_PARAMS: &str = "greenbelt.params";
pub const META_FEATURES: &str = "greenbelt.feature_names";

const INPUT: &str = "input";
const LABEL: &str = "label";
const PROBABILITIES: &str = "probabilities";
const PREDICTION: &str = "prediction";
const ML_DOMAIN: &str = "ai.onnx.ml";

/// Serialise a logistic regression model. `feature_names` must name every
/// feature, in column order.
pub fn export_logreg(model: &LogRegModel, feature_names: &[String]) -> Result<Vec<u8>, TrainError> {
    let f = model.n_features();
    check_names(feature_names, f)?;
    if let Some(bad) = model
        .coefficients
        .iter()
        .chain([&model.intercept])
        .find(|v| !v.is_finite())
    {
        return Err(TrainError::InvalidParam {
            name: "coefficients",
            value: bad.to_string(),
            reason: "every coefficient and the intercept must be finite to export",
        });
    }
    // Row k of the coefficient matrix scores class k: -w for 0, w for 1, so
    // LOGISTIC yields sigmoid(-z) = 1 - p and sigmoid(z) = p.
    let w: Vec<f32> = model.coefficients.iter().map(|c| *c as f32).collect();
    let coefficients: Vec<f32> = w.iter().map(|c| -c).chain(w.iter().copied()).collect();
    let b = model.intercept as f32;
    let node = NodeProto {
        input: vec![INPUT.into()],
        output: vec![LABEL.into(), PROBABILITIES.into()],
        name: "LinearClassifier".into(),
        op_type: "LinearClassifier".into(),
        domain: ML_DOMAIN.into(),
        attribute: vec![
            ints("classlabels_ints", vec![0, 1]),
            floats("coefficients", coefficients),
            floats("intercepts", vec![-b, b]),
            int("multi_class", 0),
            string("post_transform", "LOGISTIC"),
        ],
        ..NodeProto::default()
    };
    let params = json(&model.params)?;
    let doc = format!(
        "L2-regularised logistic regression trained by {PRODUCER} {}; params {params}",
        env!("CARGO_PKG_VERSION")
    );
    Ok(model_bytes(
        "greenbelt_logreg",
        vec![node],
        vec![],
        f,
        doc,
        "logreg",
        params,
        feature_names,
        classifier_outputs(),
    ))
}

/// Serialise a linear regression model: one `ai.onnx.ml.LinearRegressor`
/// (no post-transform), output `prediction` FP32 `[N, 1]`. Both ONNX Runtime
/// and tract run it. `feature_names` must name every feature, in column order.
pub fn export_linreg(model: &LinRegModel, feature_names: &[String]) -> Result<Vec<u8>, TrainError> {
    let f = model.n_features();
    check_names(feature_names, f)?;
    if let Some(bad) = model
        .coefficients
        .iter()
        .chain([&model.intercept])
        .find(|v| !v.is_finite() || !(**v as f32).is_finite())
    {
        return Err(TrainError::InvalidParam {
            name: "coefficients",
            value: bad.to_string(),
            reason: "every coefficient and the intercept must be finite in f32 to export",
        });
    }
    let node = NodeProto {
        input: vec![INPUT.into()],
        output: vec![PREDICTION.into()],
        name: "LinearRegressor".into(),
        op_type: "LinearRegressor".into(),
        domain: ML_DOMAIN.into(),
        attribute: vec![
            floats(
                "coefficients",
                model.coefficients.iter().map(|c| *c as f32).collect(),
            ),
            floats("intercepts", vec![model.intercept as f32]),
            string("post_transform", "NONE"),
            int("targets", 1),
        ],
        ..NodeProto::default()
    };
    let params = json(&model.params)?;
    let doc = format!(
        "ridge linear regression trained by {PRODUCER} {}; params {params}",
        env!("CARGO_PKG_VERSION")
    );
    Ok(model_bytes(
        "greenbelt_linreg",
        vec![node],
        vec![],
        f,
        doc,
        "linreg",
        params,
        feature_names,
        regressor_outputs(),
    ))
}

/// Serialise a boosted-trees model: a classifier for [`Objective::LogLoss`],
/// a regressor (the tree ensemble alone, `prediction` `[N, 1]`) for
/// [`Objective::SquaredError`]. `feature_names` must name every feature, in
/// column order.
pub fn export_gbdt(model: &GbdtModel, feature_names: &[String]) -> Result<Vec<u8>, TrainError> {
    let f = model.n_features;
    check_names(feature_names, f)?;
    model.check()?;
    let mut t = TreeAttributes::default();
    for (tree_id, tree) in model.trees.iter().enumerate() {
        let tree_id = tree_id as i64;
        for (node_id, node) in tree.nodes.iter().enumerate() {
            let node_id = node_id as i64;
            t.tree_ids.push(tree_id);
            t.node_ids.push(node_id);
            match node {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    t.feature_ids.push(*feature as i64);
                    t.modes.push(b"BRANCH_LEQ".to_vec());
                    t.values.push(*threshold);
                    t.true_ids.push(*left as i64);
                    t.false_ids.push(*right as i64);
                }
                Node::Leaf { value } => {
                    t.feature_ids.push(0);
                    t.modes.push(b"LEAF".to_vec());
                    t.values.push(0.0);
                    t.true_ids.push(0);
                    t.false_ids.push(0);
                    t.target_tree_ids.push(tree_id);
                    t.target_node_ids.push(node_id);
                    t.target_weights.push(*value as f32);
                }
            }
        }
    }
    let n_leaves = t.target_weights.len();
    let regression = model.objective == Objective::SquaredError;
    let trees = NodeProto {
        input: vec![INPUT.into()],
        output: vec![if regression { PREDICTION } else { "raw_score" }.into()],
        name: "TreeEnsembleRegressor".into(),
        op_type: "TreeEnsembleRegressor".into(),
        domain: ML_DOMAIN.into(),
        attribute: vec![
            string("aggregate_function", "SUM"),
            floats("base_values", vec![model.base_score as f32]),
            int("n_targets", 1),
            ints("nodes_falsenodeids", t.false_ids),
            ints("nodes_featureids", t.feature_ids),
            strings("nodes_modes", t.modes),
            ints("nodes_nodeids", t.node_ids),
            ints("nodes_treeids", t.tree_ids),
            ints("nodes_truenodeids", t.true_ids),
            floats("nodes_values", t.values),
            string("post_transform", "NONE"),
            ints("target_ids", vec![0; n_leaves]),
            ints("target_nodeids", t.target_node_ids),
            ints("target_treeids", t.target_tree_ids),
            floats("target_weights", t.target_weights),
        ],
        ..NodeProto::default()
    };
    let params = json(&model.params)?;
    if regression {
        let doc = format!(
            "gradient-boosted trees ({} trees, squared error) trained by {PRODUCER} {}; params {params}",
            model.trees.len(),
            env!("CARGO_PKG_VERSION")
        );
        return Ok(model_bytes(
            "greenbelt_gbdt_regressor",
            vec![trees],
            vec![],
            f,
            doc,
            "gbdt_regression",
            params,
            feature_names,
            regressor_outputs(),
        ));
    }
    let nodes = vec![
        trees,
        op("Sigmoid", &["raw_score"], "p1", vec![]),
        op("Sub", &["one", "p1"], "p0", vec![]),
        op("Concat", &["p0", "p1"], PROBABILITIES, vec![int("axis", 1)]),
        op(
            "ArgMax",
            &[PROBABILITIES],
            LABEL,
            vec![int("axis", 1), int("keepdims", 0)],
        ),
    ];
    let one = TensorProto {
        name: "one".into(),
        data_type: DataType::Float as i32,
        float_data: vec![1.0],
        ..TensorProto::default()
    };
    let doc = format!(
        "gradient-boosted trees ({} trees, log-loss) trained by {PRODUCER} {}; params {params}",
        model.trees.len(),
        env!("CARGO_PKG_VERSION")
    );
    Ok(model_bytes(
        "greenbelt_gbdt",
        nodes,
        vec![one],
        f,
        doc,
        "gbdt",
        params,
        feature_names,
        classifier_outputs(),
    ))
}

#[derive(Default)]
struct TreeAttributes {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    feature_ids: Vec<i64>,
    modes: Vec<Vec<u8>>,
    values: Vec<f32>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    target_tree_ids: Vec<i64>,
    target_node_ids: Vec<i64>,
    target_weights: Vec<f32>,
}

fn check_names(names: &[String], n_features: usize) -> Result<(), TrainError> {
    if names.len() != n_features {
        return Err(TrainError::FeatureCount {
            what: "feature_names for export",
            expected: n_features,
            got: names.len(),
        });
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, TrainError> {
    serde_json::to_string(value).map_err(|e| TrainError::InvalidParam {
        name: "params",
        value: e.to_string(),
        reason: "cannot be written as JSON",
    })
}

/// The classifier outputs: `label` INT64 `[N]`, `probabilities` FP32 `[N, 2]`.
fn classifier_outputs() -> Vec<ValueInfoProto> {
    vec![
        tensor_info(LABEL, DataType::Int64, &[None]),
        tensor_info(PROBABILITIES, DataType::Float, &[None, Some(2)]),
    ]
}

/// The regressor output: `prediction` FP32 `[N, 1]`.
fn regressor_outputs() -> Vec<ValueInfoProto> {
    vec![tensor_info(PREDICTION, DataType::Float, &[None, Some(1)])]
}

#[allow(clippy::too_many_arguments)] // private; each argument is one part of the file
fn model_bytes(
    graph_name: &str,
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    n_features: usize,
    doc: String,
    trainer: &str,
    params: String,
    feature_names: &[String],
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    // Serialising a slice of strings cannot fail.
    let names = serde_json::to_string(feature_names).unwrap_or_default();
    let graph = GraphProto {
        node: nodes,
        name: graph_name.into(),
        initializer,
        input: vec![tensor_info(
            INPUT,
            DataType::Float,
            &[None, Some(n_features as i64)],
        )],
        output: outputs,
        ..GraphProto::default()
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            },
            OperatorSetIdProto {
                domain: ML_DOMAIN.into(),
                version: ML_OPSET,
            },
        ],
        producer_name: PRODUCER.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc,
        graph: Some(graph),
        metadata_props: vec![
            entry(META_FEATURES, names),
            entry(META_PARAMS, params),
            entry(META_TRAINER, trainer.into()),
        ],
        ..ModelProto::default()
    };
    model.encode_to_vec()
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value,
    }
}

/// A tensor value: `None` dims are left unnamed (dynamic), as
/// scikit-learn's converter writes them.
fn tensor_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: d.map(dimension::Value::DimValue),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TensorTypeProto {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn op(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: op_type.into(),
        op_type: op_type.into(),
        attribute,
        ..NodeProto::default()
    }
}

fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..AttributeProto::default()
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        i,
        ..attr(name, AttributeType::Int)
    }
}

fn ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints,
        ..attr(name, AttributeType::Ints)
    }
}

fn floats(name: &str, floats: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats,
        ..attr(name, AttributeType::Floats)
    }
}

fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        s: s.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

fn strings(name: &str, strings: Vec<Vec<u8>>) -> AttributeProto {
    AttributeProto {
        strings,
        ..attr(name, AttributeType::Strings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{gbdt, logreg, synthetic};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn logreg_file_is_deterministic_and_carries_metadata() {
        let data = synthetic::linear(300, 3, 1);
        let model = logreg::fit(&data.matrix().unwrap(), &data.y, &Default::default()).unwrap();
        let a = export_logreg(&model, &names(3)).unwrap();
        assert_eq!(a, export_logreg(&model, &names(3)).unwrap());
        let proto = ModelProto::decode(a.as_slice()).unwrap();
        assert_eq!(proto.ir_version, 7);
        let graph = proto.graph.unwrap();
        assert_eq!(graph.name, "greenbelt_logreg");
        assert_eq!(graph.node[0].op_type, "LinearClassifier");
        let meta: Vec<(&str, &str)> = proto
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert!(meta.contains(&(META_TRAINER, "logreg")), "{meta:?}");
        assert!(
            meta.contains(&(META_FEATURES, r#"["f0","f1","f2"]"#)),
            "{meta:?}"
        );
        assert!(
            proto.doc_string.contains("\"max_iter\":100"),
            "{}",
            proto.doc_string
        );
        assert!(matches!(
            export_logreg(&model, &names(2)),
            Err(TrainError::FeatureCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn gbdt_file_lists_every_node_and_leaf() {
        let data = synthetic::disc(400, 1);
        let params = gbdt::GbdtParams {
            n_estimators: 3,
            ..Default::default()
        };
        let model = gbdt::fit(&data.matrix().unwrap(), &data.y, &params).unwrap();
        let bytes = export_gbdt(&model, &names(4)).unwrap();
        assert_eq!(bytes, export_gbdt(&model, &names(4)).unwrap());
        let graph = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "TreeEnsembleRegressor",
                "Sigmoid",
                "Sub",
                "Concat",
                "ArgMax"
            ]
        );
        let attr = |name: &str| {
            graph.node[0]
                .attribute
                .iter()
                .find(|a| a.name == name)
                .unwrap()
                .clone()
        };
        let total: usize = model.trees.iter().map(|t| t.nodes.len()).sum();
        assert_eq!(attr("nodes_nodeids").ints.len(), total);
        let leaves = model
            .trees
            .iter()
            .flat_map(|t| &t.nodes)
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count();
        assert_eq!(attr("target_weights").floats.len(), leaves);
        assert_eq!(attr("base_values").floats, vec![model.base_score as f32]);
    }

    #[test]
    fn regressors_have_one_prediction_output() {
        let data = synthetic::regression(300, 3, 1);
        let x = data.matrix().unwrap();
        let lin = crate::linreg::fit(&x, &data.y, &Default::default()).unwrap();
        let bytes = export_linreg(&lin, &names(3)).unwrap();
        let proto = ModelProto::decode(bytes.as_slice()).unwrap();
        let meta: Vec<(&str, &str)> = proto
            .metadata_props
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert!(meta.contains(&(META_TRAINER, "linreg")), "{meta:?}");
        let graph = proto.graph.unwrap();
        assert_eq!(graph.node.len(), 1);
        assert_eq!(graph.node[0].op_type, "LinearRegressor");
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["prediction"]);

        let params = gbdt::GbdtParams {
            n_estimators: 3,
            ..Default::default()
        };
        let trees = gbdt::fit_regression(&x, &data.y, &params).unwrap();
        let graph = ModelProto::decode(export_gbdt(&trees, &names(3)).unwrap().as_slice())
            .unwrap()
            .graph
            .unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["TreeEnsembleRegressor"], "no sigmoid for regression");
        assert_eq!(graph.node[0].output, ["prediction"]);
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["prediction"]);
    }
}
