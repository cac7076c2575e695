//! Artifacts in an S3-compatible bucket, against a local endpoint (moto's
//! server; `scripts/test.sh` starts one and sets GREENBELT_TEST_S3_ENDPOINT,
//! e.g. http://127.0.0.1:5000). Skipped, with a SKIP line, without one or in
//! a build without the `s3` feature.

use bytes::Bytes;
use greenbelt_registry::{ArtifactStore, NewVersion};

/// The endpoint, or None with the reason printed.
fn endpoint(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("GREENBELT_TEST_S3_ENDPOINT") else {
        eprintln!("SKIP {test}: GREENBELT_TEST_S3_ENDPOINT is not set");
        return None;
    };
    if !cfg!(feature = "s3") {
        eprintln!(
            "SKIP {test}: greenbelt-registry was built without the `s3` feature (cargo test -p greenbelt-registry --features s3)"
        );
        return None;
    }
    Some(endpoint.trim_end_matches('/').to_string())
}

/// A new, empty bucket on the endpoint (moto accepts unsigned requests).
async fn bucket(endpoint: &str, test: &str) -> String {
    let name = format!(
        "gb-{}-{}-{}",
        test.replace('_', "-"),
        std::process::id(),
        greenbelt_registry::now_us()
    );
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket {name}: {r:?}");
    name
}

fn options(endpoint: &str) -> Vec<(&str, &str)> {
    vec![
        ("endpoint", endpoint),
        ("allow_http", "true"),
        ("region", "us-east-1"),
        ("access_key_id", "greenbelt-test"),
        ("secret_access_key", "greenbelt-test"),
    ]
}

/// Replace the object at `key` with a plain S3 client.
#[cfg(feature = "s3")]
async fn overwrite(endpoint: &str, bucket: &str, key: &str, bytes: &'static [u8]) {
    use object_store::ObjectStoreExt;
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("greenbelt-test")
        .with_secret_access_key("greenbelt-test")
        .build()
        .unwrap();
    s3.put(&key.into(), bytes.into()).await.unwrap();
}

#[cfg(not(feature = "s3"))]
async fn overwrite(_: &str, _: &str, _: &str, _: &'static [u8]) {
    unreachable!("S3 tests skip without the s3 feature")
}

#[tokio::test]
async fn s3_register_read_back_and_refuse_a_tampered_object() {
    let Some(endpoint) = endpoint("s3_register_read_back_and_refuse_a_tampered_object") else {
        return;
    };
    let bucket = bucket(&endpoint, "artifacts").await;
    let store =
        ArtifactStore::open_with(&format!("s3://{bucket}/models/"), &options(&endpoint)).unwrap();
    assert_eq!(store.base(), format!("s3://{bucket}/models"));

    // Register a version whose artifact lives in the bucket.
    let model = Bytes::from_static(b"not really onnx, but bytes are bytes");
    let (uri, sha) = store.put(model.clone(), "onnx").await.unwrap();
    let key = format!("models/sha256/{}/{sha}.onnx", &sha[..2]);
    assert_eq!(uri, format!("s3://{bucket}/{key}"));
    let (registry, _dir) = crate::backends::sqlite().await;
    let v = registry
        .register(NewVersion {
            model: "fraud".into(),
            artifact_uri: uri.clone(),
            sha256: sha.clone(),
            format: "onnx".into(),
            ..NewVersion::default()
        })
        .await
        .unwrap();

    // Read it back through the registry record, from a second store opened
    // on the same location (as a server would), with the sha256 check.
    let reader =
        ArtifactStore::open_with(&format!("s3://{bucket}/models"), &options(&endpoint)).unwrap();
    let record = registry.version("fraud", v.version).await.unwrap();
    assert_eq!(
        reader
            .get(&record.artifact_uri, &record.sha256)
            .await
            .unwrap(),
        model
    );
    // The object is where the URI says: a store on the bucket's root finds
    // it under the full key.
    let root = ArtifactStore::open_with(&format!("s3://{bucket}"), &options(&endpoint)).unwrap();
    assert_eq!(
        root.get(&format!("s3://{bucket}/{key}"), &sha)
            .await
            .unwrap(),
        model
    );
    // Content addressing: the same bytes again are the same object.
    assert_eq!(store.put(model.clone(), "onnx").await.unwrap().0, uri);

    // Tamper with the object behind the registry's back: refused, naming it.
    overwrite(&endpoint, &bucket, &key, b"tampered").await;
    let err = reader
        .get(&record.artifact_uri, &record.sha256)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupted") && err.contains(&sha) && err.contains(&uri),
        "{err}"
    );

    // A missing object and an artifact from another store are clear errors.
    let missing = format!("s3://{bucket}/models/sha256/00/{}.onnx", "0".repeat(64));
    let err = reader.get(&missing, &sha).await.unwrap_err().to_string();
    assert!(err.contains("reading") && err.contains(&missing), "{err}");
    let err = reader
        .get(&format!("s3://elsewhere/{key}"), &sha)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in this store"), "{err}");
}

#[tokio::test]
async fn s3_location_errors_name_the_fix() {
    if endpoint("s3_location_errors_name_the_fix").is_none() {
        return;
    }
    let err = ArtifactStore::open_with("s3://", &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no bucket name"), "{err}");
    let err = ArtifactStore::open_with("s3://b", &[("endpoit", "http://x")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("\"endpoit\" is not an S3 setting"), "{err}");
}
