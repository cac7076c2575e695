//! Safe releases against a real server under real traffic: a canary that
//! passes, a canary that fails analysis and is rolled back automatically, an
//! inconclusive canary that pauses, blue/green promotion and automatic
//! switch-back, and shadow comparison against known disagreement.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenbelt_control::rollout::{self, Controller, Phase, controller::wall_ms};

use crate::cuttable::Cuttable;
use greenbelt_registry::{ArtifactStore, NewVersion, Registry};
use greenbelt_serve::{Config, Server};
use serde_json::json;

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../fixtures/models/logreg/{version}/model.onnx"))
}

/// Deterministic rows in [-3, 3).
fn rows(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n * 20)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0) as f32
        })
        .collect()
}

fn body(seed: u64) -> serde_json::Value {
    json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": rows(seed, 1)}]})
}

struct Env {
    /// Serving processes; the first is the one `app` and `base` name.
    nodes: Vec<Node>,
    reg: Registry,
    store: ArtifactStore,
    app: Arc<greenbelt_serve::infer::AppState>,
    base: String,
    deployment: greenbelt_serve::deployment::DeploymentConfig,
    client: reqwest::Client,
    extra: String,
    _dir: tempfile::TempDir,
}

/// The admin token the tests' rollout API accepts (actor "alice").
const TOKEN: &str = "s3cret";

/// A server with deployment `fraud` (extra TOML appended to its entry),
/// versions v1 (champion), v2 and any extra tagged copies, on a SQLite
/// registry in a temp dir.
async fn env(extra: &str, tagged: &[(u32, serde_json::Value)]) -> (Env, Vec<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/registry.db", dir.path().display());
    env_on(dir, &url, extra, tagged).await
}

/// Like [`env`] on the registry at `url` (which must be empty).
async fn env_on(
    dir: tempfile::TempDir,
    url: &str,
    extra: &str,
    tagged: &[(u32, serde_json::Value)],
) -> (Env, Vec<i64>) {
    let reg = Registry::open(url).await.unwrap();
    let store = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let mut versions = Vec::new();
    for (fixture_version, tags) in [(1, json!({})), (2, json!({}))]
        .into_iter()
        .chain(tagged.iter().cloned())
    {
        let bytes = std::fs::read(fixture(fixture_version)).unwrap();
        let (uri, sha) = store.put(bytes.into(), "onnx").await.unwrap();
        let v = reg
            .register(NewVersion {
                model: "fraud".into(),
                artifact_uri: uri,
                sha256: sha,
                format: "onnx".into(),
                tags,
                created_by: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .version;
        versions.push(v);
    }
    reg.set_alias("fraud", "champion", versions[0], "test", "initial")
        .await
        .unwrap();
    let (node, deployment) = Node::start(&dir, &reg, &store, "a", extra).await;
    let env = Env {
        _dir: dir,
        reg,
        store,
        app: node.app.clone(),
        base: node.base.clone(),
        deployment,
        client: reqwest::Client::new(),
        nodes: vec![node],
        extra: extra.to_string(),
    };
    env.wait_serving(&env.base).await;
    (env, versions)
}

/// One serving process: a server with the rollout admin API and its
/// controller, on a shared registry.
struct Node {
    app: Arc<greenbelt_serve::infer::AppState>,
    base: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Node {
    async fn start(
        dir: &tempfile::TempDir,
        reg: &Registry,
        store: &ArtifactStore,
        name: &str,
        extra: &str,
    ) -> (Node, greenbelt_serve::deployment::DeploymentConfig) {
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            format!("[[tokens]]\nname = \"alice\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n"),
        )
        .unwrap();
        let text = format!(
            "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\nallow_fault_injection = true\n[telemetry]\nlog_requests = false\n[auth]\ntokens_file = \"{}\"\n[repository]\npath = \"{}\"\n[[deployments]]\nname = \"fraud\"\n{extra}\n",
            tokens.display(),
            dir.path().join("empty-repo").display()
        );
        let config =
            Config::from_toml_str(&text, Path::new("test.toml"), std::iter::empty()).unwrap();
        let deployment = config.deployments[0].clone();
        let mut server = Server::build(config).await.unwrap();
        let api = Arc::new(greenbelt_registry::http::ApiState {
            registry: reg.clone(),
        });
        server.merge(rollout::http::router(Arc::new(rollout::http::RolloutApi {
            api,
            deployments: vec![deployment.clone()],
        })));
        let base = format!("http://{}", server.http_addr().unwrap());
        let app = server.state.clone();
        let controller = Arc::new(Controller::new(
            reg.clone(),
            store.clone(),
            server.state.clone(),
            dir.path().join(format!("cache-{name}")),
            Duration::from_millis(25),
        ));
        let tasks = controller.spawn(vec![deployment.clone()], None);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        (
            Node {
                app,
                base,
                tasks,
                stop: Some(stop),
            },
            deployment,
        )
    }
}

/// One observed response.
#[derive(Debug, Clone)]
struct Seen {
    ok: bool,
    version: Option<String>,
    track: Option<String>,
}

impl Env {
    async fn get_json(&self, url: String) -> serde_json::Value {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait (bounded) until the server at `base` answers from v1.
    async fn wait_serving(&self, base: &str) {
        for _ in 0..400 {
            if self.call_at(base, 0, None).await.1.as_deref() == Some("1") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("v1 never served at {base}");
    }

    /// Start another replica on the same registry and artifacts; its base URL.
    async fn add_node(&mut self) -> String {
        let name = format!("n{}", self.nodes.len());
        let (node, _) = Node::start(&self._dir, &self.reg, &self.store, &name, &self.extra).await;
        let base = node.base.clone();
        self.nodes.push(node);
        self.wait_serving(&base).await;
        base
    }

    async fn call(
        &self,
        seed: u64,
        headers: Option<(&str, &str)>,
    ) -> (bool, Option<String>, Option<String>) {
        self.call_at(&self.base, seed, headers).await
    }

    async fn call_at(
        &self,
        base: &str,
        seed: u64,
        headers: Option<(&str, &str)>,
    ) -> (bool, Option<String>, Option<String>) {
        let mut req = self
            .client
            .post(format!("{base}/v2/models/fraud/infer"))
            .json(&body(seed));
        if let Some((k, v)) = headers {
            // Forcing a track needs a deployer (here: admin) token.
            req = req.header(k, v).bearer_auth(TOKEN);
        }
        match req.send().await {
            Ok(r) => {
                let h = |n: &str| {
                    r.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                (
                    r.status().is_success(),
                    h("x-greenbelt-model-version"),
                    h("x-greenbelt-track"),
                )
            }
            Err(_) => (false, None, None),
        }
    }

    /// Continuous load from `clients` tasks until `stop` is set.
    fn load(
        &self,
        clients: usize,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
        (0..clients)
            .map(|c| {
                let client = self.client.clone();
                let url = format!("{}/v2/models/fraud/infer", self.base);
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let r = client
                            .post(&url)
                            .json(&body(c as u64 * 1_000_000 + i))
                            .send()
                            .await;
                        seen.push(match r {
                            Ok(r) => {
                                let h = |n: &str| {
                                    r.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_string)
                                };
                                Seen {
                                    ok: r.status().is_success(),
                                    version: h("x-greenbelt-model-version"),
                                    track: h("x-greenbelt-track"),
                                }
                            }
                            Err(_) => Seen {
                                ok: false,
                                version: None,
                                track: None,
                            },
                        });
                    }
                    seen
                })
            })
            .collect()
    }

    /// The alias moves in the controller tick after the decision is stored.
    async fn wait_alias(&self, alias: &str, want: Option<i64>) {
        for _ in 0..400 {
            if self.reg.alias("fraud", alias).await.unwrap() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fraud@{alias} never became {want:?}");
    }

    async fn wait_phase(&self, want: &[Phase], limit: Duration) -> rollout::Rollout {
        let start = tokio::time::Instant::now();
        loop {
            let st = rollout::status(&self.reg, "fraud").await.unwrap();
            if want.contains(&st.rollout.phase) {
                return st.rollout;
            }
            assert!(
                start.elapsed() < limit,
                "rollout stuck in {:?}: {:?}",
                st.rollout.phase,
                st.rollout.runs.last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

const CANARY: &str = r#"sticky_header = "x-user"
[deployments.rollout]
steps = [{ set_weight = 30 }, { analysis = 3 }, { set_weight = 100 }, { analysis = 1 }]
[deployments.rollout.analysis]
interval = "300ms"
min_samples = 10
failure_limit = 0
conditions = ["error_rate <= 0.01", "p99_ms <= stable.p99_ms * 20 + 50"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_passes_analysis_and_promotes_with_zero_failures() {
    let (e, v) = env(CANARY, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = rollout::start(&e.reg, &e.deployment, v[1], None, "test", wall_ms())
        .await
        .unwrap();
    assert_eq!((r.stable, r.candidate, r.weight), (v[0], v[1], 30.0));
    // During the 30% step: a sticky user always lands on one version, and
    // the track header can force the canary.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let first = e.call(7, Some(("x-user", user))).await.1;
        for _ in 0..5 {
            assert_eq!(
                e.call(7, Some(("x-user", user))).await.1,
                first,
                "user {user} switched versions"
            );
        }
    }
    let forced = e.call(1, Some(("x-greenbelt-track", "canary"))).await;
    assert_eq!(
        (forced.1.as_deref(), forced.2.as_deref()),
        (Some("2"), Some("canary"))
    );
    // The dashboard shows the rollout the controller is running.
    let data: serde_json::Value = e
        .client
        .get(format!("{}/dashboard/data", e.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fraud = data["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "fraud")
        .unwrap();
    assert_eq!(fraud["rollout"]["id"], r.id.as_str(), "{fraud}");
    assert_eq!(fraud["rollout"]["candidate"], v[1]);
    assert!(
        ["progressing", "paused"].contains(&fraud["rollout"]["phase"].as_str().unwrap()),
        "{fraud}"
    );
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    assert_eq!(done.phase, Phase::Promoted, "{:?}", done.runs);
    // The champion alias moved, with the rollout named in the history.
    e.wait_alias("champion", Some(v[1])).await;
    let history = e.reg.history("fraud", Some("champion")).await.unwrap();
    assert!(
        history.last().unwrap().reason.contains(&done.id),
        "{history:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(load).await;
    assert!(
        seen.iter().all(|s| s.ok),
        "{} failed requests",
        seen.iter().filter(|s| !s.ok).count()
    );
    let canary = seen
        .iter()
        .filter(|s| s.track.as_deref() == Some("canary"))
        .count();
    assert!(canary > 0, "the canary never answered");
    assert_eq!(seen.last().unwrap().version.as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_rolled_back_automatically() {
    // v3: a copy of v1 that fails every request after warm-up.
    let (e, v) = env(CANARY, &[(1, json!({"fault": "error"}))]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    rollout::start(&e.reg, &e.deployment, v[2], None, "test", wall_ms())
        .await
        .unwrap();
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    let took = started.elapsed();
    assert_eq!(done.phase, Phase::Aborted);
    assert!(
        done.reason.as_deref().unwrap_or("").contains("error_rate"),
        "{:?}",
        done.reason
    );
    assert_eq!(done.weight, 0.0);
    // Detected within two analysis intervals (plus start-up of the canary).
    assert!(took < Duration::from_secs(5), "abort took {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = e.call(3, None).await;
    assert_eq!((after.0, after.1.as_deref()), (true, Some("1")));
    stop.store(true, Ordering::Relaxed);
    let seen = collect(load).await;
    let failed = seen.iter().filter(|s| !s.ok).count();
    assert!(failed > 0, "the broken canary never answered");
    // Failures only ever came from the canary share.
    assert!(
        (failed as f64) < seen.len() as f64 * 0.3,
        "{failed} of {}",
        seen.len()
    );
    // Champion untouched; the canary alias records the abort and why.
    e.wait_alias("champion", Some(v[0])).await;
    let canary = e.reg.history("fraud", Some("canary")).await.unwrap();
    let last = canary.last().unwrap();
    assert_eq!(last.to_version, None);
    assert!(
        last.reason.contains("aborted") && last.reason.contains("error_rate"),
        "{last:?}"
    );
    let st = rollout::status(&e.reg, "fraud").await.unwrap();
    assert!(st.events.iter().any(|ev| ev.event == "aborted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_condition_aborts_the_canary() {
    let extra = CANARY.replace(
        "conditions = [\"error_rate <= 0.01\", ",
        "failure_conditions = [\"error_rate > 0.5\"]\nconditions = [",
    );
    assert_ne!(extra, CANARY);
    // v3: a copy of v1 that fails every request after warm-up.
    let (e, v) = env(&extra, &[(1, json!({"fault": "error"}))]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    rollout::start(&e.reg, &e.deployment, v[2], None, "test", wall_ms())
        .await
        .unwrap();
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    assert_eq!(done.phase, Phase::Aborted, "{:?}", done.runs);
    let reason = done.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("failure condition error_rate > 0.5"),
        "{reason}"
    );
    stop.store(true, Ordering::Relaxed);
    collect(load).await;
    e.wait_alias("champion", Some(v[0])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_is_inconclusive_and_pauses() {
    let extra = CANARY.replace("min_samples = 10", "min_samples = 100000");
    let (e, v) = env(&extra, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(1, stop.clone());
    rollout::start(&e.reg, &e.deployment, v[1], None, "test", wall_ms())
        .await
        .unwrap();
    let r = e
        .wait_phase(
            &[Phase::Paused, Phase::Promoted, Phase::Aborted],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(r.phase, Phase::Paused);
    assert!(
        r.pause_reason
            .as_deref()
            .unwrap_or("")
            .contains("min_samples"),
        "{:?}",
        r.pause_reason
    );
    assert_eq!(
        e.reg.alias("fraud", "champion").await.unwrap(),
        Some(v[0]),
        "never promoted"
    );
    // A person can still abort it.
    rollout::command(&e.reg, "fraud", rollout::Command::Abort, "ops", wall_ms())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(collect(load).await.iter().all(|s| s.ok));
}

const BLUE_GREEN: &str = r#"[deployments.rollout]
strategy = "blue_green"
auto_promote = true
pre_promotion_analysis = 1
post_promotion_analysis = 2
scale_down_delay = "200ms"
[deployments.rollout.analysis]
# long enough for 5 samples from 3 clients on a loaded 2-core CI machine
interval = "600ms"
min_samples = 5
shadow_fraction = 1.0
conditions = ["error_rate <= 0.01", "shadow_error_rate <= 0.01"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_switches_and_switches_back_on_failure() {
    let (e, v) = env(BLUE_GREEN, &[(1, json!({"fault": "error"}))]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    rollout::start(&e.reg, &e.deployment, v[1], None, "test", wall_ms())
        .await
        .unwrap();
    // The preview is reachable on request, while production stays on v1.
    let mut preview = None;
    for _ in 0..200 {
        let r = e.call(5, Some(("x-greenbelt-track", "preview"))).await;
        if r.0 {
            preview = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let preview = preview.expect("preview never reachable");
    assert_eq!(
        (preview.1.as_deref(), preview.2.as_deref()),
        (Some("2"), Some("preview"))
    );
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    assert_eq!(done.phase, Phase::Promoted, "{:?}", done.runs);
    e.wait_alias("champion", Some(v[1])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(load).await;
    assert!(
        seen.iter().all(|s| s.ok),
        "blue/green switch failed requests"
    );
    assert!(seen.iter().any(|s| s.version.as_deref() == Some("1")));
    assert_eq!(seen.last().unwrap().version.as_deref(), Some("2"));

    // Now a broken green with no pre-promotion analysis: it goes live, the
    // post-promotion analysis fails, and traffic switches back to v2.
    let mut dep = e.deployment.clone();
    dep.rollout.pre_promotion_analysis = 0;
    dep.rollout.analysis.conditions = vec!["error_rate <= 0.01".into()];
    dep.rollout.analysis.shadow_fraction = 0.0;
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    rollout::start(&e.reg, &dep, v[2], None, "test", wall_ms())
        .await
        .unwrap();
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    assert_eq!(done.phase, Phase::Aborted);
    assert!(
        done.switched_ms.is_some(),
        "it was switched before the failure"
    );
    // The switch back lands in the controller tick that stores the abort;
    // wait (bounded) for it to be served rather than for a fixed time, so a
    // loaded CI machine with slow SQLite writes does not fail the test.
    e.wait_alias("champion", Some(v[1])).await;
    let mut back = false;
    for _ in 0..400 {
        if e.call(7, None).await.1.as_deref() == Some("2") {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "traffic never switched back to v2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(load).await;
    assert_eq!(seen.last().unwrap().version.as_deref(), Some("2"));
    let history = e.reg.history("fraud", Some("champion")).await.unwrap();
    assert!(
        history.last().unwrap().reason.contains("rolled back"),
        "{:?}",
        history.last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_comparison_counts_known_disagreement() {
    // v2 (the other logreg) mirrors every request; v3 (v1 with flipped
    // outputs) mirrors every request and disagrees on every row.
    let extra = "[[deployments.shadow]]\nversion = 2\nfraction = 1.0\n[[deployments.shadow]]\nversion = 3\nfraction = 1.0\n";
    let (e, _v) = env(extra, &[(1, json!({"fault": "wrong"}))]).await;
    // Wait for both shadows to be loaded and attached.
    for _ in 0..400 {
        let s: serde_json::Value = e
            .get_json(format!("{}/admin/deployments/fraud", e.base))
            .await;
        if s["routing"]["shadows"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // What each version answers, asked directly (pinned): the expected disagreement.
    let n = 200u64;
    let mut expected_disagree = 0;
    let label = |v: serde_json::Value| {
        v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "label")
            .unwrap()["data"][0]
            .as_i64()
            .unwrap()
    };
    for seed in 0..n {
        let mut labels = Vec::new();
        for ver in [1, 2] {
            let r: serde_json::Value = e
                .client
                .post(format!("{}/v2/models/fraud/versions/{ver}/infer", e.base))
                .json(&body(seed))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            labels.push(label(r));
        }
        expected_disagree += u64::from(labels[0] != labels[1]);
    }
    let before: Vec<greenbelt_serve::shadow::ShadowReport> = e
        .client
        .get(format!("{}/admin/shadow/fraud", e.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = |v: u64| {
        before
            .iter()
            .find(|r| r.version == v)
            .map(|r| r.counters)
            .unwrap_or_default()
    };
    for seed in 0..n {
        let (ok, version, _) = e.call(seed, None).await;
        assert!(ok && version.as_deref() == Some("1"));
    }
    let mut reports: Vec<greenbelt_serve::shadow::ShadowReport> = Vec::new();
    for _ in 0..400 {
        reports = e
            .client
            .get(format!("{}/admin/shadow/fraud", e.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if reports.len() == 2
            && reports.iter().all(|r| {
                let b = base(r.version);
                r.counters.compared + r.counters.errors + r.counters.dropped
                    >= n + b.compared + b.errors + b.dropped
            })
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(reports.len(), 2, "{reports:?}");
    let (other, wrong) = (&reports[0], &reports[1]);
    assert_eq!((other.version, wrong.version), (2, 3));
    let w = other.counters.since(&base(2));
    assert_eq!(w.compared, n, "nothing dropped at this rate");
    assert_eq!(
        w.rows - (w.agreement * w.rows as f64).round() as u64,
        expected_disagree
    );
    assert_eq!(wrong.counters.rows_agree, 0);
    assert_eq!(wrong.agreement, 0.0);
    assert!(wrong.abs_diff.max > 0.0 && !wrong.worst.is_empty());
    assert!(wrong.worst.len() <= greenbelt_serve::shadow::WORST_KEPT);
    eprintln!(
        "shadow v2: {expected_disagree} of {n} rows disagree; window agreement {:.3}",
        w.agreement
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_the_rollout() {
    let extra = CANARY.replace(
        "steps = [{ set_weight = 30 }, { analysis = 3 }, { set_weight = 100 }, { analysis = 1 }]",
        "steps = [{ set_weight = 40 }, { pause = \"\" }, { set_weight = 100 }]",
    );
    let (mut e, v) = env(&extra, &[]).await;
    rollout::start(&e.reg, &e.deployment, v[1], None, "test", wall_ms())
        .await
        .unwrap();
    let r = e
        .wait_phase(&[Phase::Paused], Duration::from_secs(10))
        .await;
    assert_eq!((r.weight, r.step), (40.0, 1));
    // Wait until the canary answers, then "restart": stop the controller.
    let mut canary_seen = false;
    for _ in 0..200 {
        if e.call(1, Some(("x-greenbelt-track", "canary"))).await.0 {
            canary_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(canary_seen);
    for t in e.nodes[0].tasks.drain(..) {
        t.abort();
    }
    // A person promotes while no controller runs; the state is in the database.
    rollout::command(&e.reg, "fraud", rollout::Command::Promote, "ops", wall_ms())
        .await
        .unwrap();
    assert_eq!(
        e.reg.alias("fraud", "champion").await.unwrap(),
        Some(v[0]),
        "nothing applied it yet"
    );
    let s: serde_json::Value = e
        .get_json(format!("{}/admin/deployments/fraud", e.base))
        .await;
    assert_eq!(
        s["routing"]["canary_bp"], 4000,
        "the last plan keeps serving meanwhile"
    );
    let done = rollout::status(&e.reg, "fraud").await.unwrap().rollout;
    assert_eq!(
        done.phase,
        Phase::Promoted,
        "promote past the pause finishes the steps"
    );
    // A new controller, as a restarted server builds it, picks it up.
    let controller = Arc::new(Controller::new(
        e.reg.clone(),
        e.store.clone(),
        e.app.clone(),
        e._dir.path().join("cache-a"),
        Duration::from_millis(25),
    ));
    e.nodes[0].tasks = controller.spawn(vec![e.deployment.clone()], None);
    for _ in 0..200 {
        if e.reg.alias("fraud", "champion").await.unwrap() == Some(v[1])
            && e.call(2, None).await.1.as_deref() == Some("2")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the restarted controller did not apply the promotion");
}

fn breaker_cfg_two() -> greenbelt_core::breaker::BreakerConfig {
    greenbelt_core::breaker::BreakerConfig {
        minimum_number_of_calls: 2,
        sliding_window_size: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn promql_conditions_read_a_prometheus_answer() {
    // A stand-in Prometheus: answers /api/v1/query with the query it got
    // echoed as a label and a fixed sample, or an error for "bad".
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(
            |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let query = q.get("query").cloned().unwrap_or_default();
                if query.contains("bad") {
                    return axum::Json(json!({"status": "error", "error": "parse error"}));
                }
                axum::Json(json!({"status": "success", "data": {"resultType": "vector",
                "result": [{"metric": {"q": query}, "value": [1.0, "0.25"]}]}}))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut queries = std::collections::BTreeMap::new();
    queries.insert(
        "burn".to_string(),
        "rate(errors{deployment=\"{deployment}\",version=\"{version}\"}[1m])".to_string(),
    );
    queries.insert("broken".to_string(), "bad query".to_string());
    let breaker = greenbelt_core::breaker::SharedBreaker::new("prometheus", breaker_cfg_two());
    let got = greenbelt_control::rollout::analysis::prometheus(
        &url,
        &queries,
        "fraud",
        7,
        Duration::from_secs(5),
        &breaker,
    )
    .await;
    assert_eq!(got.get("burn"), Some(&0.25));
    // A Prometheus that is not there: the failures open the breaker, and
    // the next query is refused at once instead of waiting.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let fresh = greenbelt_core::breaker::SharedBreaker::new("prometheus", breaker_cfg_two());
    for _ in 0..2 {
        let none = greenbelt_control::rollout::analysis::prometheus(
            &gone,
            &queries,
            "fraud",
            7,
            Duration::from_secs(5),
            &fresh,
        )
        .await;
        assert!(none.is_empty());
    }
    let s = fresh.snapshot();
    assert_eq!(s.state, greenbelt_core::breaker::State::Open, "{s:?}");
    assert!(s.counts.rejected >= 2, "{s:?}");
    assert!(
        !got.contains_key("broken"),
        "a failed query has no value (→ inconclusive)"
    );
    let c = greenbelt_control::rollout::analysis::Condition::parse("prom.burn < 0.2", &queries)
        .unwrap();
    let m = greenbelt_control::rollout::analysis::Measurement {
        candidate: greenbelt_serve::live::Window {
            requests: 100,
            ..Default::default()
        },
        prom: got,
        ..Default::default()
    };
    let run = greenbelt_control::rollout::analysis::judge(&[c], 1, &m, 0);
    assert_eq!(
        run.verdict,
        greenbelt_control::rollout::machine::Verdict::Failure
    );
    assert!(run.notes[0].contains("prom.burn"), "{:?}", run.notes);
}

/// POST `body` to the rollout API of `base`, with the admin token unless `anonymous`.
async fn admin(
    e: &Env,
    base: &str,
    path: &str,
    body: &str,
    anonymous: bool,
) -> (u16, serde_json::Value) {
    let mut req = e
        .client
        .post(format!("{base}/admin/rollouts/{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if !anonymous {
        req = req.bearer_auth(TOKEN);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

const HELD_CANARY: &str = r#"[deployments.rollout]
steps = [{ set_weight = 40 }, { pause = "" }, { set_weight = 60 }, { pause = "" }]
[deployments.rollout.analysis]
interval = "200ms"
min_samples = 1000000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_admin_api_refuses_bad_requests_and_drives_a_rollout() {
    let (e, v) = env(HELD_CANARY, &[]).await;
    let base = e.base.clone();
    let start = format!("{{\"version\": {}}}", v[1]);
    // Writes need the token; bodies are checked and the error names the fix.
    assert_eq!(admin(&e, &base, "fraud/start", &start, true).await.0, 401);
    for (bad, want) in [
        ("not json", "body:"),
        ("", "body:"),
        ("{\"version\": \"two\"}", "body:"),
        ("{\"version\": 2, \"colour\": \"blue\"}", "unknown field"),
        (
            "{\"version\": 2, \"strategy\": \"yolo\"}",
            "unknown variant",
        ),
        ("[1, 2, 3]", "body:"),
    ] {
        let (status, err) = admin(&e, &base, "fraud/start", bad, false).await;
        assert_eq!(status, 400, "{bad}: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{bad}: {msg}");
        assert!(
            msg.contains("\"version\": N"),
            "{bad}: the fix is named: {msg}"
        );
    }
    let (status, err) = admin(&e, &base, "fraud/start", "{\"version\": 999}", false).await;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].as_str().unwrap().contains("999"), "{err}");
    let (status, err) = admin(&e, &base, "nope/start", &start, false).await;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].as_str().unwrap().contains("[[deployments]]"));
    let (status, err) = admin(&e, &base, "fraud/explode", "", false).await;
    assert_eq!(status, 404, "{err}");
    assert!(err["error"].as_str().unwrap().contains("promote-full"));
    let missing = e
        .client
        .get(format!("{base}/admin/rollouts/fraud"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404, "no rollout yet");
    // None of that started anything.
    assert!(e.reg.rollout("fraud").await.unwrap().is_none());

    // A real rollout through the API: start, a second start refused,
    // pause, resume, abort.
    let (status, r) = admin(&e, &base, "fraud/start", &start, false).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(
        (r["stable"].as_i64(), r["candidate"].as_i64()),
        (Some(v[0]), Some(v[1]))
    );
    let (status, err) = admin(&e, &base, "fraud/start", &start, false).await;
    assert_eq!(status, 409, "one rollout at a time: {err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("promote or abort it first"),
        "{err}"
    );
    e.wait_phase(&[Phase::Paused], Duration::from_secs(10))
        .await;
    let (status, r) = admin(&e, &base, "fraud/resume", "", false).await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = admin(&e, &base, "fraud/pause", "", false).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["phase"], "paused", "{r}");
    let (status, r) = admin(&e, &base, "fraud/abort", "", true).await;
    assert_eq!(status, 401, "{r}");
    let (status, r) = admin(&e, &base, "fraud/abort", "", false).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["phase"], "aborted", "{r}");
    let shown: serde_json::Value = e.get_json(format!("{base}/admin/rollouts/fraud")).await;
    assert_eq!(shown["rollout"]["phase"], "aborted", "{shown}");
    let events: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ev| ev["event"].as_str())
        .collect();
    assert!(
        events.contains(&"started") && events.contains(&"aborted"),
        "{events:?}"
    );
    // The abort reaches the data plane: only v1 answers, even when asked for the canary.
    for _ in 0..200 {
        if e.call(1, Some(("x-greenbelt-track", "canary")))
            .await
            .1
            .as_deref()
            == Some("1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for seed in 0..20 {
        assert_eq!(e.call(seed, None).await.1.as_deref(), Some("1"));
    }
}

/// A fresh PostgreSQL database for one test, or None with a SKIP line.
async fn postgres_url(test: &str) -> Option<String> {
    let Ok(admin_url) = std::env::var("GREENBELT_TEST_POSTGRES_URL") else {
        eprintln!("SKIP {test} on PostgreSQL: GREENBELT_TEST_POSTGRES_URL is not set");
        return None;
    };
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let db = format!("gb_rel_{test}_{}", std::process::id());
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

/// Two replicas on one registry: a rollout started through one is applied
/// by both, a command sent to the other is applied by both, and the two
/// controllers racing on every tick log each transition once.
async fn replicas_agree(e: &mut Env, v: &[i64]) {
    let other = e.add_node().await;
    let base = e.base.clone();
    let start = format!("{{\"version\": {}}}", v[1]);
    let (status, r) = admin(e, &base, "fraud/start", &start, false).await;
    assert_eq!(status, 201, "{r}");
    // Both replicas serve the canary at 40%.
    for b in [&base, &other] {
        let mut ok = false;
        for _ in 0..300 {
            let s: serde_json::Value = e.get_json(format!("{b}/admin/deployments/fraud")).await;
            if s["routing"]["canary_bp"] == 4000
                && e.call_at(b, 1, Some(("x-greenbelt-track", "canary")))
                    .await
                    .1
                    .as_deref()
                    == Some("2")
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "replica {b} never served the canary");
    }
    e.wait_phase(&[Phase::Paused], Duration::from_secs(10))
        .await;
    // Promoted through the other replica: both switch to v2.
    let (status, r) = admin(e, &other, "fraud/promote-full", "", false).await;
    assert_eq!(status, 200, "{r}");
    e.wait_alias("champion", Some(v[1])).await;
    for b in [&base, &other] {
        let mut ok = false;
        for _ in 0..300 {
            if e.call_at(b, 3, None).await.1.as_deref() == Some("2") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "replica {b} never switched to v2");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = rollout::status(&e.reg, "fraud").await.unwrap();
    assert_eq!(st.rollout.phase, Phase::Promoted);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for ev in &st.events {
        *counts.entry(ev.event.as_str()).or_default() += 1;
    }
    assert_eq!(counts.get("started"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("promoted"), Some(&1), "{counts:?}");
    let champion = e.reg.history("fraud", Some("champion")).await.unwrap();
    assert_eq!(
        champion
            .iter()
            .filter(|h| h.reason.contains(&st.rollout.id))
            .count(),
        1,
        "the champion moved once: {champion:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_sqlite_agree_on_the_rollout() {
    let (mut e, v) = env(HELD_CANARY, &[]).await;
    replicas_agree(&mut e, &v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_postgres_agree_on_the_rollout() {
    let Some(url) = postgres_url("replicas").await else {
        return;
    };
    let (mut e, v) = env_on(tempfile::tempdir().unwrap(), &url, HELD_CANARY, &[]).await;
    replicas_agree(&mut e, &v).await;
}

const FAILSAFE_CANARY: &str = r#"[deployments.rollout]
steps = [{ set_weight = 40 }, { pause = "" }]
on_registry_error = "rollback"
registry_error_grace = "300ms"
[deployments.rollout.analysis]
interval = "200ms"
min_samples = 1000000
"#;

/// The registry database goes away mid-rollout: predictions continue, the
/// canary's traffic goes back to stable once `registry_error_grace` has
/// passed (the rollback policy), and when the database answers again the
/// rollout is aborted, never promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_mid_rollout_rolls_the_canary_back_and_never_promotes() {
    let Some(url) = postgres_url("failsafe").await else {
        return;
    };
    // postgres://user@host:port/db -> the proxy in place of host:port
    let (scheme_user, rest) = url.rsplit_once('@').unwrap();
    let (hostport, db) = rest.split_once('/').unwrap();
    let proxy = Cuttable::start(hostport.to_string()).await;
    let proxied = format!("{scheme_user}@127.0.0.1:{}/{db}", proxy.port);
    let (e, v) = env_on(tempfile::tempdir().unwrap(), &proxied, FAILSAFE_CANARY, &[]).await;
    let canary_bp = || {
        e.app
            .repository
            .get("fraud")
            .and_then(|d| d.routing.as_ref().map(|r| (r.canary, r.canary_bp)))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let load = e.load(3, stop.clone());
    rollout::start(&e.reg, &e.deployment, v[1], None, "test", wall_ms())
        .await
        .unwrap();
    let mut at_40 = false;
    for _ in 0..400 {
        if canary_bp() == Some((Some(2), 4000)) {
            at_40 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(at_40, "the canary never reached 40%: {:?}", canary_bp());

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    let mut back = None;
    for _ in 0..1500 {
        if canary_bp() == Some((None, 0)) {
            back = Some(cut_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back.expect("the canary's traffic never went back to stable");
    // The grace (300 ms) plus at most the controller's registry timeout.
    assert!(back < Duration::from_secs(8), "took {back:?}");
    for seed in 0..20 {
        assert_eq!(e.call(seed, None).await.1.as_deref(), Some("1"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.restore();
    let done = e
        .wait_phase(&[Phase::Promoted, Phase::Aborted], Duration::from_secs(30))
        .await;
    assert_eq!(done.phase, Phase::Aborted);
    assert!(
        done.reason.as_deref().unwrap_or("").contains("unreachable"),
        "{:?}",
        done.reason
    );
    assert_eq!(e.reg.alias("fraud", "champion").await.unwrap(), Some(v[0]));
    stop.store(true, Ordering::Relaxed);
    let seen = collect(load).await;
    assert!(
        seen.iter().all(|s| s.ok),
        "{} of {} predictions failed during the registry outage",
        seen.iter().filter(|s| !s.ok).count(),
        seen.len()
    );
}
