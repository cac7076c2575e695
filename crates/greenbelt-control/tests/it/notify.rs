//! On PostgreSQL an alias move reaches a serving process through LISTEN/NOTIFY,
//! not the next poll: with a 60 s poll interval the controller the switch still happens in
//! well under a second. Needs GREENBELT_TEST_POSTGRES_URL (e.g.
//! postgres://postgres@127.0.0.1:5432/test); skipped, with a SKIP line, without.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_control::rollout::Controller;
use greenbelt_registry::{ArtifactStore, NewVersion, Registry};
use greenbelt_serve::{Config, Server};
use tokio::time::Instant;

/// The registry in the test database, or None with a SKIP line. Tests use a
/// model name of their own (see [`model_name`]) rather than a fresh database.
async fn postgres(test: &str) -> Option<Registry> {
    let Ok(url) = std::env::var("GREENBELT_TEST_POSTGRES_URL") else {
        eprintln!("SKIP {test}: GREENBELT_TEST_POSTGRES_URL is not set");
        return None;
    };
    Some(Registry::open(&url).await.unwrap())
}

fn model_name() -> String {
    format!(
        "notify_{}_{}",
        std::process::id(),
        greenbelt_registry::now_us()
    )
}

async fn register(reg: &Registry, store: &ArtifactStore, model: &str, version: u32) -> i64 {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../fixtures/models/logreg/{version}/model.onnx"));
    let (uri, sha) = store
        .put(std::fs::read(file).unwrap().into(), "onnx")
        .await
        .unwrap();
    reg.register(NewVersion {
        model: model.into(),
        artifact_uri: uri,
        sha256: sha,
        format: "onnx".into(),
        created_by: "test".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_move_wakes_the_controller_without_waiting_for_the_poll() {
    let Some(reg) = postgres("notify_watch").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let model = model_name();
    let v1 = register(&reg, &store, &model, 1).await;
    let v2 = register(&reg, &store, &model, 2).await;
    reg.set_alias(&model, "champion", v1, "test", "initial")
        .await
        .unwrap();
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[repository]\npath = \"{}\"\n[[routes]]\nname = \"fraud\"\nmodel = \"{model}\"\nalias = \"champion\"\n",
        dir.path().join("empty-repo").display()
    );
    let config = Config::from_toml_str(&text, Path::new("test.toml"), std::iter::empty()).unwrap();
    let deployments = config.deployments.clone();
    let server = Server::build(config).await.unwrap();
    let poll = Duration::from_secs(60);
    let controller = Arc::new(Controller::new(
        reg.clone(),
        store,
        server.state.clone(),
        dir.path().join("cache"),
        poll,
    ));
    let (switch_tx, mut switches) = tokio::sync::mpsc::unbounded_channel();
    let tasks = controller.spawn(deployments, Some(switch_tx));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    // The first poll happens at once and serves v1.
    let first = tokio::time::timeout(Duration::from_secs(20), switches.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.from, first.to), (None, v1));
    // Let the listener subscribe (it wakes the deployments once when it does).
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (to, from) in [(v2, v1), (v1, v2)] {
        let moved = Instant::now();
        reg.set_alias(&model, "champion", to, "test", "notify test")
            .await
            .unwrap();
        let sw = tokio::time::timeout(Duration::from_secs(10), switches.recv())
            .await
            .expect("no switch within 10 s although the poll interval is 60 s: the notification did not arrive")
            .unwrap();
        let took = moved.elapsed();
        assert_eq!((sw.from, sw.to), (Some(from), to));
        assert!(took < Duration::from_secs(5), "{took:?}");
        eprintln!(
            "alias move -> served by notification in {:.1} ms (poll interval {poll:?}; warm: {})",
            took.as_secs_f64() * 1000.0,
            sw.was_warm
        );
    }
    for t in tasks {
        t.abort();
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
}
