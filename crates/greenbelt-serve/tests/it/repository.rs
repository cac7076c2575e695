//! Version policy, load/unload and "a bad load never takes down what serves".

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn default_policy_serves_the_newest_version_only() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "logreg", 1);
            copy_model(r, "logreg", 2, "logreg", 2);
        },
        "",
    )
    .await;
    let (status, meta) = s.get("/v2/models/logreg").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["2"]));
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 20]})
    );
    let r = s
        .client
        .post(format!("{}/v2/models/logreg/infer", s.http))
        .json(&logreg_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-greenbelt-model-version"], "2");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_close(&probs(&body), &logreg_golden_probs(2));
    let (status, body) = s.infer_logreg("/v2/models/logreg/versions/1/infer").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no version \"1\""),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn policy_all_and_specific() {
    let mut s = start(
        |r| {
            copy_model(r, "logreg", 1, "all", 1);
            copy_model(r, "logreg", 2, "all", 2);
            write_model_config(r, "all", "version_policy = \"all\"\n");
            copy_model(r, "logreg", 1, "pinned", 1);
            copy_model(r, "logreg", 2, "pinned", 2);
            write_model_config(r, "pinned", "version_policy = { specific = [1] }\n");
        },
        "",
    )
    .await;
    assert_eq!(
        s.get("/v2/models/all").await.1["versions"],
        json!(["1", "2"])
    );
    for v in [1, 2] {
        let (status, body) = s
            .infer_logreg(&format!("/v2/models/all/versions/{v}/infer"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["model_version"], v.to_string());
        assert_close(&probs(&body), &logreg_golden_probs(v));
    }
    assert_eq!(s.get("/v2/models/pinned").await.1["versions"], json!(["1"]));
    let (status, body) = s.infer_logreg("/v2/models/pinned/infer").await;
    assert_eq!((status, body["model_version"].as_str()), (200, Some("1")));
    assert_eq!(s.get("/v2/models/pinned/versions/1/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/pinned/versions/2/ready").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn unload_then_load_and_new_versions_roll_forward() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    assert_eq!(
        s.post("/v2/repository/models/logreg/unload", &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 404);
    assert_eq!(s.get("/v2/models/logreg/ready").await.0, 404);
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(
        index,
        json!([{"name": "logreg", "state": "UNAVAILABLE", "reason": "not loaded"}])
    );
    assert_eq!(
        s.post("/v2/repository/models/logreg/load", &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    // A new version on disk is picked up by the next load.
    copy_model(s.repo.path(), "logreg", 2, "logreg", 2);
    assert_eq!(
        s.post("/v2/repository/models/logreg/load", &json!({}))
            .await
            .0,
        200
    );
    let (_, body) = s.infer_logreg("/v2/models/logreg/infer").await;
    assert_eq!(body["model_version"], "2");
    let (_, index) = s
        .post("/v2/repository/index", &json!({"ready": true}))
        .await;
    assert_eq!(
        index,
        json!([{"name": "logreg", "version": "2", "state": "READY", "reason": ""}])
    );
    // Unknown and invalid names.
    assert_eq!(
        s.post("/v2/repository/models/nope/load", &json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        s.post("/v2/repository/models/nope/unload", &json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        s.post("/v2/repository/models/..%2Fetc/load", &json!({}))
            .await
            .0,
        400
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bad_load_never_takes_down_the_serving_version() {
    let mut s = start(|r| copy_model(r, "logreg", 1, "logreg", 1), "").await;
    // A corrupt newer version: the load fails, version 1 keeps serving.
    let v2 = s.repo.path().join("logreg/2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("model.onnx"), b"garbage, not a model").unwrap();
    let (status, body) = s
        .post("/v2/repository/models/logreg/load", &json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("version 2"), "{msg}");
    let (status, body) = s.infer_logreg("/v2/models/logreg/infer").await;
    assert_eq!((status, body["model_version"].as_str()), (200, Some("1")));
    // The model's status says the last load failed while version 1 serves.
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    assert_eq!(index[0]["state"], "READY");
    assert!(
        index[0]["reason"]
            .as_str()
            .unwrap()
            .contains("last load failed: version 2"),
        "{index}"
    );
    // A broken config is refused the same way.
    write_model_config(s.repo.path(), "logreg", "version_polcy = \"all\"\n");
    let (status, body) = s
        .post("/v2/repository/models/logreg/load", &json!({}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("version_polcy"),
        "{body}"
    );
    assert_eq!(s.infer_logreg("/v2/models/logreg/infer").await.0, 200);
    // A model that never loaded reports why.
    copy_model(s.repo.path(), "logreg", 1, "broken", 1);
    std::fs::write(s.repo.path().join("broken/1/model.onnx"), b"nope").unwrap();
    assert_eq!(
        s.post("/v2/repository/models/broken/load", &json!({}))
            .await
            .0,
        400
    );
    let (status, body) = s.infer_logreg("/v2/models/broken/infer").await;
    assert_eq!(status, 503, "{body}");
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    let broken = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(
        broken["reason"].as_str().unwrap().contains("version 1"),
        "{broken}"
    );
    s.stop().await;
}
