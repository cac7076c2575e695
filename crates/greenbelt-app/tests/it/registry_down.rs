//! The registry database is down when `serve` starts: the server starts
//! anyway, serves each deployment's last recorded version from the
//! artifact cache (readiness false for a deployment with nothing cached),
//! answers the registry API with 503 naming the reason, and once the
//! database answers mounts the API and follows the aliases again. Real
//! PostgreSQL behind a TCP proxy the test cuts.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_serve::Config;
use serde_json::{Value, json};

use crate::cuttable::Cuttable;

async fn postgres_url() -> Option<String> {
    let Ok(admin_url) = std::env::var("GREENBELT_TEST_POSTGRES_URL") else {
        eprintln!("SKIP registry_down: GREENBELT_TEST_POSTGRES_URL is not set");
        return None;
    };
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let db = format!("gb_app_cache_{}", std::process::id());
    let admin = sqlx::AnyPool::connect(&admin_url).await.unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    Some(format!("{base}/{db}"))
}

fn write_config(dir: &Path, registry_url: &str, deployments: &[&str]) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let mut text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"{registry_url}\"\nartifacts = \"{d}/artifacts\"\ncache_dir = \"{d}/cache\"\n\
         poll_interval_ms = 50\nstartup_timeout_ms = 1500\n",
        d = dir.display()
    );
    for name in deployments {
        text.push_str(&format!(
            "[[deployments]]\nname = \"{name}\"\nalias = \"champion\"\n"
        ));
    }
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn infer(client: &reqwest::Client, base: &str, model: &str) -> u16 {
    let row: Vec<f32> = (0..20).map(|i| i as f32 / 10.0).collect();
    client
        .post(format!("{base}/v2/models/{model}/infer"))
        .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Poll `f` every 50 ms until it holds, for at most `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(config: &Config, model: &str, alias_to_first: bool) -> Vec<i64> {
    let registry = greenbelt_app::registry::open(config, None).await.unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let mut versions = Vec::new();
    for _ in 0..2 {
        let v = greenbelt_app::registry::register_file(
            &registry,
            config,
            model.into(),
            &fixture,
            json!({}),
            json!({}),
            "test".into(),
        )
        .await
        .unwrap();
        versions.push(v.version);
    }
    if alias_to_first {
        registry
            .set_alias(model, "champion", versions[0], "test", "release")
            .await
            .unwrap();
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_registry_down_at_start_up_serve_starts_from_the_artifact_cache() {
    let Some(url) = postgres_url().await else {
        return;
    };
    let (scheme_user, rest) = url.rsplit_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let proxy = Cuttable::start(hostport.to_string()).await;
    let proxied = format!("{scheme_user}@127.0.0.1:{}/{db}", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    // 1. A normal start: the controller loads the champion and records it.
    let config = write_config(dir.path(), &proxied, &["scorer"]);
    let scorer = register(&config, "scorer", true).await;
    let running = App::build(config).await.unwrap().spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    eventually(20, "ready once the champion is loaded", || async {
        get(&client, &format!("{base}/v2/health/ready")).await.0 == 200
    })
    .await;
    let record = dir.path().join("cache/deployments/scorer.json");
    eventually(5, "the served version is recorded in the cache", || async {
        record.is_file()
    })
    .await;
    let recorded: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(recorded["version"], json!(scorer[0]), "{recorded}");
    running.stop().await.unwrap();

    // 2. The database is unreachable; a second deployment was never served.
    proxy.cut();
    let config = write_config(dir.path(), &proxied, &["scorer", "fresh"]);
    let started = tokio::time::Instant::now();
    let app = App::build(config.clone()).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "start-up waits startup_timeout_ms (1.5 s), not forever: {took:?}"
    );
    let running = app.spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    assert_eq!(
        infer(&client, &base, "scorer").await,
        200,
        "served from the cache"
    );
    let (status, body) = get(&client, &format!("{base}/v2/health/ready")).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("fresh") && !reason.contains("scorer"),
        "{body}"
    );
    let (_, body) = get(&client, &format!("{base}/admin/deployments/fresh")).await;
    let why = body["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("registry unreachable at start-up") && why.contains("nothing cached"),
        "{body}"
    );
    let (status, body) = get(&client, &format!("{base}/registry/models")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("artifact cache"),
        "{body}"
    );

    // 3. The database answers again: the API is mounted, and the
    // deployments follow their aliases (a move made meanwhile, a new one).
    proxy.restore();
    let fresh = register(&config, "fresh", true).await;
    let registry = greenbelt_app::registry::open(&config, None).await.unwrap();
    registry
        .set_alias("scorer", "champion", scorer[1], "test", "moved while down")
        .await
        .unwrap();
    eventually(
        40,
        "the registry API answers once the database does",
        || async { get(&client, &format!("{base}/registry/models")).await.0 == 200 },
    )
    .await;
    eventually(20, "ready once the new deployment is loaded", || async {
        get(&client, &format!("{base}/v2/health/ready")).await.0 == 200
    })
    .await;
    assert_eq!(infer(&client, &base, "fresh").await, 200);
    eventually(
        20,
        "scorer follows its alias to the second version",
        || async {
            let (_, d) = get(&client, &format!("{base}/admin/deployments/scorer")).await;
            d["routing"]["stable"] == json!(scorer[1])
        },
    )
    .await;
    assert_eq!(fresh.len(), 2);
    let (status, b) = get(&client, &format!("{base}/admin/breakers")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["breakers"]["registry"]["state"], "closed", "{b}");
    running.stop().await.unwrap();
}
