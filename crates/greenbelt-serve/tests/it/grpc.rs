//! The gRPC API through a generated tonic client.

use greenbelt_serve::grpc::pb;
use greenbelt_serve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::Code;

use crate::support::*;

fn request(
    model: &str,
    version: &str,
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    raw: Vec<u8>,
) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: "g1".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn row_bytes() -> Vec<u8> {
    logreg_row().iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[tokio::test]
async fn grpc_health_metadata_infer_and_errors() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            copy_model(r, "logreg", 2, "logreg", 2);
            write_model_config(r, "logreg", "version_policy = \"all\"\n");
        },
        "",
    )
    .await;
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "logreg".into(),
            version: "2".into(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "logreg".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1", "2"]);
    assert_eq!(meta.inputs[0].shape, vec![-1, 20]);

    for v in [1u32, 2] {
        let resp = c
            .model_infer(request(
                "logreg",
                &v.to_string(),
                "input",
                "FP32",
                vec![1, 20],
                row_bytes(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.id, "g1");
        assert_eq!(resp.model_version, v.to_string());
        let i = resp
            .outputs
            .iter()
            .position(|o| o.name == "probabilities")
            .unwrap();
        let p: Vec<f64> = resp.raw_output_contents[i]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect();
        assert_close(&p, &logreg_golden_probs(v));
    }

    let cases = [
        (
            request("nope", "", "input", "FP32", vec![1, 20], row_bytes()),
            Code::NotFound,
        ),
        (
            request("logreg", "7", "input", "FP32", vec![1, 20], row_bytes()),
            Code::NotFound,
        ),
        (
            request("logreg", "", "x", "FP32", vec![1, 20], row_bytes()),
            Code::InvalidArgument,
        ),
        (
            request("logreg", "", "input", "FP32", vec![1, 20], vec![0; 7]),
            Code::InvalidArgument,
        ),
        (
            request("logreg", "", "input", "INT8", vec![1, 20], vec![0; 20]),
            Code::InvalidArgument,
        ),
        (
            request("logreg", "", "input", "WHAT", vec![1, 20], vec![0; 20]),
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let name = req.inputs[0].name.clone();
        let err = c.model_infer(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(!err.message().is_empty());
        if code == Code::InvalidArgument {
            assert!(
                err.message().contains(&name) || err.message().contains("WHAT"),
                "{}",
                err.message()
            );
        }
    }
    // Repository extension over gRPC.
    let index = c
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 2);
    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "logreg".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .model_infer(request(
            "logreg",
            "",
            "input",
            "FP32",
            vec![1, 20],
            row_bytes(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.repository_model_load(pb::RepositoryModelLoadRequest {
        model_name: "logreg".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        c.model_infer(request(
            "logreg",
            "",
            "input",
            "FP32",
            vec![1, 20],
            row_bytes()
        ))
        .await
        .is_ok()
    );
    s.stop().await;
}

#[tokio::test]
async fn grpc_messages_over_the_limit_are_resource_exhausted() {
    let mut s = start(
        |r| copy_model(r, "logreg", 1, "logreg", 1),
        "max_request_bytes = 4096\n",
    )
    .await;
    let mut c = GrpcInferenceServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let big: Vec<u8> = (0..64).flat_map(|_| row_bytes()).collect();
    let err = c
        .model_infer(request("logreg", "", "input", "FP32", vec![64, 20], big))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        c.model_infer(request(
            "logreg",
            "",
            "input",
            "FP32",
            vec![1, 20],
            row_bytes()
        ))
        .await
        .is_ok()
    );
    s.stop().await;
}
