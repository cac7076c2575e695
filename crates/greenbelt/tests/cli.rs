//! The binary end to end: a pipeline killed between "register" and
//! "promote" leaves the registry consistent, and a re-run completes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;

fn greenbelt(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenbelt"));
    c.current_dir(dir).env("GREENBELT_LOG", "warn");
    c
}

fn registry_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = greenbelt(dir)
        .arg("registry")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_crash_between_register_and_promote_leaves_the_registry_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = greenbelt(d)
        .args([
            "pipeline",
            "demo-data",
            "--out",
            "data/tx.csv",
            "--rows",
            "4000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        d.join("p.toml"),
        "name = \"crash\"\nmodel = \"fraud\"\ngates = [\"auc >= 0.6\"]\n[data]\npath = \"data/tx.csv\"\nlabel = \"is_fraud\"\ntimestamp = \"event_ts\"\nexclude = [\"tx_id\", \"user_id\", \"merchant_id\"]\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n[latency]\nconcurrency = 1\nrequests = 50\n",
    )
    .unwrap();
    // First run promotes v1.
    let out = greenbelt(d)
        .args(["pipeline", "run", "p.toml", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["promoted"], true);
    let history_before = registry_json(d, &["history", "fraud"]);

    // Second run dies after registering v2, before moving the alias.
    let out = greenbelt(d)
        .args(["pipeline", "run", "p.toml"])
        .env("GREENBELT_PIPELINE_FAULT", "after-register")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the process was killed");
    let versions = registry_json(d, &["versions", "fraud"]);
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "v2 registered"
    );
    assert_eq!(
        versions["aliases"],
        serde_json::json!([["champion", 1]]),
        "alias unchanged"
    );
    assert_eq!(
        registry_json(d, &["history", "fraud"]),
        history_before,
        "no half-written event"
    );

    // A re-run completes: v3 promoted.
    let out = greenbelt(d)
        .args(["pipeline", "run", "p.toml", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["registered_version"].as_i64(),
            report["promoted"].as_bool()
        ),
        (Some(3), Some(true))
    );
    let at_now = registry_json(d, &["history", "fraud", "--alias", "champion"]);
    assert_eq!(at_now["events"].as_array().unwrap().len(), 2);

    // Rollback from the CLI goes back to v1 and is recorded.
    let rolled = registry_json(d, &["rollback", "fraud", "--reason", "test"]);
    assert_eq!(rolled["event"]["to_version"], 1);
    assert!(rolled["took_ms"].as_f64().unwrap() < 1000.0);
}

#[test]
fn cli_errors_are_clear_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let out = greenbelt(dir.path())
        .args(["registry", "show", "nope", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model \"nope\" has no version 1"));
    let out = greenbelt(dir.path())
        .args(["pipeline", "run", "missing.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read missing.toml"));
    let out = greenbelt(dir.path())
        .args(["serve", "--config", "missing.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn a_route_named_like_a_repository_model_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models/fraud/1")).unwrap();
    std::fs::write(
        dir.path().join("g.toml"),
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[repository]\npath = \"models\"\n[[routes]]\nname = \"fraud\"\n",
    )
    .unwrap();
    let out = greenbelt(dir.path())
        .args(["serve", "--config", "g.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[[deployments]] name \"fraud\" is also a model directory"),
        "{err}"
    );
}

#[test]
fn manual_registration_records_the_model_signature() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let v = registry_json(d, &["register", "lr", "--file", model.to_str().unwrap()]);
    let sig = &v["signature"];
    assert_eq!(
        sig["inputs"],
        serde_json::json!([{"name": "input", "datatype": "FP32", "shape": [-1, 20]}]),
        "{v}"
    );
    let outputs: Vec<&str> = sig["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["label", "probabilities"], "{v}");
    assert_eq!(sig["outputs"][1]["shape"], serde_json::json!([-1, 2]));
    // Stored: `show` gives it back.
    let shown = registry_json(d, &["show", "lr", "1"]);
    assert_eq!(&shown["signature"], sig);

    // A file that is not a model is refused before anything is registered.
    std::fs::write(d.join("junk.onnx"), b"not a model").unwrap();
    let out = greenbelt(d)
        .args(["registry", "register", "lr", "--file", "junk.onnx"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("junk.onnx does not load") && stderr.contains("signature"),
        "{stderr}"
    );
    let versions = registry_json(d, &["versions", "lr"]);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
}

/// Passwords in store URLs never reach the log or an error message: a
/// server whose registry and online store cannot be reached says which
/// store failed, with the password replaced by `***`.
#[test]
fn store_passwords_never_reach_logs_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("models")).unwrap();
    std::fs::write(
        d.join("greenbelt.toml"),
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[registry]\nurl = \"postgres://app:hunter2-secret@127.0.0.1:1/reg\"\n[[deployments]]\nname = \"fraud\"\n",
    )
    .unwrap();
    // A server starts while its registry database is down (it serves from
    // the artifact cache and keeps retrying): the URL is logged redacted,
    // in the start-up warning and in the connection errors.
    let all = serve_until(d, "serving deployments from the artifact cache");
    assert!(all.contains("app:***@127.0.0.1:1"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");

    // The online store's URL, too.
    std::fs::write(
        d.join("features.toml"),
        "[store]\nonline = \"redis://:hunter2-secret@127.0.0.1:1/0\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("greenbelt.toml"),
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[features]\ndefinitions = \"features.toml\"\n",
    )
    .unwrap();
    // A server starts while its online store is down (the connection is
    // made on first use): it runs until stopped, logging the store's URL
    // redacted.
    let all = serve_until(d, "feature store at /features");
    assert!(all.contains(":***@127.0.0.1:1"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

/// Run `greenbelt serve` (debug logs) until its output contains `wanted`
/// (at most 30 s), then kill it; returns stdout and stderr.
#[allow(clippy::disallowed_methods)] // a synchronous test polling a child process, not async code
fn serve_until(d: &Path, wanted: &str) -> String {
    use std::process::Stdio;
    let out_path = d.join("serve.out");
    let err_path = d.join("serve.err");
    let mut child = greenbelt(d)
        .env("GREENBELT_LOG", "debug")
        .args(["serve", "--config", "greenbelt.toml"])
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let read = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut exited = None;
    while !read().contains(wanted) && std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = read();
    assert!(
        exited.is_none(),
        "serve exited ({exited:?}) instead of running:\n{all}"
    );
    assert!(all.contains(wanted), "no \"{wanted}\" within 30s:\n{all}");
    all
}

#[test]
fn config_reference_command_regenerates_the_committed_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = greenbelt(dir.path())
        .args(["config-reference", "--output", "configuration.md"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("configuration.md")).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap_or_default();
    assert!(
        written == committed,
        "docs/configuration.md is stale: run `greenbelt config-reference --output docs/configuration.md`"
    );
    // Without --output it prints the same text.
    let out = greenbelt(dir.path())
        .arg("config-reference")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), written);
}

/// `registry import-mlflow` on a real MLflow file store (fixtures/mlflow,
/// made by MLflow with absolute file:// paths of another machine): the
/// versions with an ONNX model, in order, their tags and descriptions,
/// the aliases; the version without one is listed; a second import adds
/// nothing.
#[test]
fn an_mlflow_file_store_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mlruns = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mlflow/mlruns");
    let mlruns = mlruns.to_str().unwrap();

    let r = registry_json(d, &["import-mlflow", mlruns]);
    let pairs: Vec<(i64, i64, &str)> = r["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["mlflow_version"].as_i64().unwrap(),
                v["version"].as_i64().unwrap(),
                v["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs, [(1, 1, "imported"), (2, 2, "imported")], "{r}");
    assert_eq!(r["skipped"][0]["what"], "fraud version 3", "{r}");
    assert!(
        r["skipped"][0]["why"]
            .as_str()
            .unwrap()
            .contains("no ONNX model"),
        "{r}"
    );

    let models = registry_json(d, &["models"]);
    assert_eq!(models["models"], serde_json::json!(["fraud"]));
    let versions = registry_json(d, &["versions", "fraud"]);
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    assert_eq!(
        versions["aliases"],
        serde_json::json!([["challenger", 1], ["champion", 2]]),
        "{versions}"
    );
    let v2 = registry_json(d, &["show", "fraud", "2"]);
    assert_eq!(v2["tags"]["mlflow.source_version"], "2", "{v2}");
    assert_eq!(v2["tags"]["team"], "risk", "{v2}");
    assert_eq!(v2["tags"]["validation_status"], "passed", "{v2}");
    assert_eq!(
        v2["tags"]["mlflow.description"], "Retrained with C=0.5",
        "{v2}"
    );
    assert_eq!(v2["metrics"]["auc"], 0.95, "{v2}");
    assert_eq!(v2["signature"]["inputs"][0]["name"], "input", "{v2}");
    let v1 = registry_json(d, &["show", "fraud", "1"]);
    assert_eq!(v1["metrics"]["auc"], 0.93, "{v1}");
    assert!(v1["tags"].get("mlflow.description").is_none(), "{v1}");

    // Again: nothing new, no alias moves; the text lists the skipped version.
    let history = registry_json(d, &["history", "fraud"]);
    let out = greenbelt(d)
        .args(["registry", "import-mlflow", mlruns])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("imported 0 versions"), "{text}");
    assert!(text.contains("already imported"), "{text}");
    assert!(text.contains("fraud version 3: "), "{text}");
    let after = registry_json(d, &["versions", "fraud"]);
    assert_eq!(after["versions"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(registry_json(d, &["history", "fraud"]), history);

    // Not a store: said plainly.
    let out = greenbelt(d)
        .args(["registry", "import-mlflow", "nowhere"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("nowhere does not exist"),
        "{err}"
    );
}
