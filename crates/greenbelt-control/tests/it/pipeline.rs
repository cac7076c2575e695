//! The promotion pipeline end to end on the demo data: builtin trainers, an
//! external Python command, and a gate failure that leaves the champion alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_control::pipeline::definition::PipelineDef;
use greenbelt_control::pipeline::{PipelineError, RunContext, run};
use greenbelt_control::rollout::{self, Phase};
use greenbelt_registry::{ArtifactStore, Registry};
use greenbelt_serve::deployment::DeploymentConfig;

struct Project {
    dir: tempfile::TempDir,
    registry: Registry,
    artifacts: ArtifactStore,
}

async fn project() -> Project {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/tx.csv"),
        greenbelt_control::demo::fraud_csv(6000, 3, 0.0),
    )
    .unwrap();
    let registry = Registry::open(&format!("sqlite://{}/registry.db", dir.path().display()))
        .await
        .unwrap();
    let artifacts = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    Project {
        dir,
        registry,
        artifacts,
    }
}

impl Project {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    async fn run(&self, file: &Path) -> greenbelt_control::pipeline::Report {
        self.run_on(file, Vec::new()).await.unwrap()
    }

    /// Run with the project's `[[deployments]]`.
    async fn run_on(
        &self,
        file: &Path,
        deployments: Vec<DeploymentConfig>,
    ) -> Result<greenbelt_control::pipeline::Report, PipelineError> {
        let def = PipelineDef::read(file)?;
        let ctx = RunContext {
            registry: self.registry.clone(),
            artifacts: self.artifacts.clone(),
            runtimes: greenbelt_runtime::Runtimes::probe(None),
            actor: "test".into(),
            workdir: self.dir.path().join("work"),
            progress: Arc::new(|_| {}),
            historical: None,
            deployments,
        };
        run(&def, &ctx).await
    }
}

const DATA: &str = r#"
[data]
path = "data/tx.csv"
label = "is_fraud"
timestamp = "event_ts"
exclude = ["tx_id", "user_id", "merchant_id"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_pipeline_promotes_then_refuses_a_worse_candidate() {
    let p = project().await;
    let good = p.write(
        "logreg.toml",
        &format!(
            "name = \"lr\"\nmodel = \"fraud\"\ngates = [\"auc >= 0.65\", \"auc >= champion.auc - 0.005\", \"p99_ms <= 200\"]\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n[latency]\nconcurrency = 2\nrequests = 200\n"
        ),
    );
    let r = p.run(&good).await;
    assert!(r.passed && r.promoted, "{}", r.text());
    assert_eq!(r.registered_version, 1);
    assert_eq!(r.split.kind, "time");
    assert!(r.candidate_metrics["roc_auc"] > 0.65);
    assert!(r.candidate_metrics.contains_key("p99_ms"));
    assert_eq!(
        p.registry.alias("fraud", "champion").await.unwrap(),
        Some(1)
    );
    let v1 = p.registry.version("fraud", 1).await.unwrap();
    assert_eq!(v1.gate_report["passed"], true);
    assert_eq!(v1.lineage["dataset_sha256"].as_str().unwrap().len(), 64);
    assert!(v1.metrics["roc_auc"].as_f64().unwrap() > 0.65);
    // The reference profile for drift monitoring: the training features and
    // the holdout predictions, stored beside the model.
    let profile = &v1.lineage["profile"];
    let bytes = p
        .artifacts
        .get(
            profile["uri"].as_str().unwrap(),
            profile["sha256"].as_str().unwrap(),
        )
        .await
        .unwrap();
    let profile =
        greenbelt_drift::model::ModelProfile::from_json(std::str::from_utf8(&bytes).unwrap())
            .unwrap();
    let features: Vec<String> = serde_json::from_value(v1.lineage["features"].clone()).unwrap();
    assert_eq!(profile.inputs["input"], features);
    assert_eq!(profile.features.columns.len(), features.len());
    assert_eq!(profile.features.rows as usize, r.split.train_rows);
    assert_eq!(profile.predictions.rows as usize, r.split.holdout_rows);
    assert!(profile.predictions.columns.contains_key("score"));

    // A deliberately worse candidate: one weak feature. The champion-relative gate refuses it.
    let worse = p.write(
        "worse.toml",
        &format!(
            "name = \"weak\"\nmodel = \"fraud\"\ngates = [\"auc >= champion.auc - 0.005\"]\n{DATA}features = [\"device_age_days\"]\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n[latency]\nconcurrency = 1\nrequests = 50\n"
        ),
    );
    let before = p.registry.history("fraud", Some("champion")).await.unwrap();
    let r = p.run(&worse).await;
    assert!(!r.passed && !r.promoted, "{}", r.text());
    assert_eq!(r.gates[0].outcome, "fail");
    assert_eq!(r.champion.as_ref().map(|c| c.version), Some(1));
    assert_eq!(
        p.registry.alias("fraud", "champion").await.unwrap(),
        Some(1),
        "champion untouched"
    );
    assert_eq!(
        p.registry.history("fraud", Some("champion")).await.unwrap(),
        before,
        "no alias event"
    );
    let rejected = p
        .registry
        .version("fraud", r.registered_version)
        .await
        .unwrap();
    assert_eq!(rejected.tags["status"], "rejected");
    assert_eq!(rejected.gate_report["passed"], false);

    // Gradient-boosted trees: the native engine (or ONNX Runtime) runs them.
    if greenbelt_runtime::Runtimes::probe(None).runs_trees() {
        let gbdt = p.write(
            "gbdt.toml",
            &format!(
                "name = \"gb\"\nmodel = \"fraud\"\ngates = [\"auc >= 0.65\"]\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"gbdt\"\nparams = {{ n_estimators = 40, seed = 1 }}\n[latency]\nconcurrency = 2\nrequests = 200\n"
            ),
        );
        let r = p.run(&gbdt).await;
        assert!(r.promoted, "{}", r.text());
    } else {
        eprintln!("SKIP gbdt pipeline: no native engine and no ONNX Runtime (set ORT_DYLIB_PATH)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_python_training_command() {
    let Ok(python) = std::env::var("GREENBELT_TEST_PYTHON") else {
        eprintln!(
            "SKIP external training command: GREENBELT_TEST_PYTHON (a python with scikit-learn and skl2onnx) is not set"
        );
        return;
    };
    if greenbelt_runtime::Runtimes::probe(None)
        .onnxruntime
        .is_none()
    {
        eprintln!(
            "SKIP external training command: ONNX Runtime not available (set ORT_DYLIB_PATH)"
        );
        return;
    }
    let p = project().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud/train.py");
    std::fs::copy(&script, p.dir.path().join("train.py")).unwrap();
    let file = p.write(
        "py.toml",
        &format!(
            "name = \"py\"\nmodel = \"fraud\"\ngates = [\"auc >= 0.65\"]\n{DATA}\n[train]\nkind = \"command\"\ncommand = [\"{python}\", \"train.py\", \"--train\", \"{{train}}\", \"--label\", \"{{label}}\", \"--output\", \"{{output}}\", \"--n-estimators\", \"30\"]\n[latency]\nconcurrency = 2\nrequests = 200\n"
        ),
    );
    let r = p.run(&file).await;
    assert!(r.promoted, "{}", r.text());
    assert_eq!(r.trainer["kind"], "command");
    // A failing command is a clear error naming it.
    let bad = p.write(
        "bad.toml",
        &format!("name = \"bad\"\nmodel = \"fraud\"\n{DATA}\n[train]\nkind = \"command\"\ncommand = [\"{python}\", \"-c\", \"import sys; sys.exit('boom')\"]\n"),
    );
    let def = PipelineDef::read(&bad).unwrap();
    let ctx = RunContext {
        registry: p.registry.clone(),
        artifacts: p.artifacts.clone(),
        runtimes: greenbelt_runtime::Runtimes::probe(None),
        actor: "test".into(),
        workdir: p.dir.path().join("work"),
        progress: Arc::new(|_| {}),
        historical: None,
        deployments: Vec::new(),
    };
    let err = run(&def, &ctx).await.unwrap_err().to_string();
    assert!(err.contains("boom") && err.contains("exited"), "{err}");
}

#[tokio::test]
async fn bad_definitions_and_data_are_named_errors() {
    let p = project().await;
    let cases = [
        ("name = \"x\"\nmodel = \"m\"\nbogus = 1\n", "bogus"),
        (
            &format!(
                "name = \"x\"\nmodel = \"m\"\ngates = [\"auc >> 1\"]\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n"
            ),
            "auc >> 1",
        ),
        (
            &format!(
                "name = \"x\"\nmodel = \"m\"\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"svm\"\n"
            ),
            "svm",
        ),
    ];
    for (text, want) in cases {
        let f = p.write("bad.toml", text);
        let err = PipelineDef::read(&f).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    // Label leakage by name, missing label.
    std::fs::write(
        p.dir.path().join("data/leak.csv"),
        "a,is_fraud_score,is_fraud\n1,0.9,1\n2,0.1,0\n3,0.8,1\n4,0.2,0\n5,0.7,1\n",
    )
    .unwrap();
    let table =
        greenbelt_control::pipeline::dataset::read(&p.dir.path().join("data/leak.csv")).unwrap();
    let def: greenbelt_control::pipeline::definition::DataDef =
        toml::from_str("path = \"x\"\nlabel = \"is_fraud\"\nholdout_fraction = 0.4").unwrap();
    let err = greenbelt_control::pipeline::dataset::prepare(&table, &def)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is_fraud_score") && err.contains("leakage"),
        "{err}"
    );
    let def: greenbelt_control::pipeline::definition::DataDef =
        toml::from_str("path = \"x\"\nlabel = \"nope\"").unwrap();
    let err = greenbelt_control::pipeline::dataset::prepare(&table, &def)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label column \"nope\" is missing"), "{err}");
    let err = greenbelt_control::pipeline::dataset::read(&p.dir.path().join("data/none.csv"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_pipeline_gates_on_rmse_and_mae() {
    let Ok(python) = std::env::var("GREENBELT_TEST_PYTHON") else {
        eprintln!(
            "SKIP regression pipeline: GREENBELT_TEST_PYTHON (a python with scikit-learn and skl2onnx) is not set"
        );
        return;
    };
    let p = project().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud/train_amount.py");
    std::fs::copy(&script, p.dir.path().join("train_amount.py")).unwrap();
    let pipeline = |name: &str, features: &str| {
        format!(
            "name = \"{name}\"\nmodel = \"amount\"\ngates = [\"rmse <= champion.rmse * 1.05\", \"mae <= champion.mae * 1.05\"]\n[data]\npath = \"data/tx.csv\"\nlabel = \"amount\"\ntask = \"regression\"\ntimestamp = \"event_ts\"\nexclude = [\"tx_id\", \"user_id\", \"merchant_id\", \"is_fraud\"]\n{features}\n[train]\nkind = \"command\"\ncommand = [\"{python}\", \"train_amount.py\", \"--train\", \"{{train}}\", \"--label\", \"{{label}}\", \"--output\", \"{{output}}\"]\n[latency]\nconcurrency = 1\nrequests = 50\n"
        )
    };
    let good = p.write(
        "amount.toml",
        &pipeline(
            "lin",
            "features = [\"user_avg_amount_30d\", \"hour\", \"merchant_risk\", \"user_tx_count_24h\", \"distance_km\", \"is_foreign\", \"device_age_days\"]",
        ),
    );
    let r = p.run(&good).await;
    assert!(r.promoted, "{}", r.text());
    assert!(r.candidate_metrics["rmse"] > 0.0 && r.candidate_metrics["mae"] > 0.0);
    assert!(!r.candidate_metrics.contains_key("roc_auc"));
    // Without the informative feature the error grows: refused.
    let worse = p.write(
        "worse.toml",
        &pipeline("weak", "features = [\"device_age_days\"]"),
    );
    let r = p.run(&worse).await;
    assert!(!r.promoted, "{}", r.text());
    assert_eq!(
        p.registry.alias("amount", "champion").await.unwrap(),
        Some(1)
    );
}

const AMOUNT_FEATURES: &str = "features = [\"user_avg_amount_30d\", \"hour\", \"merchant_risk\", \"user_tx_count_24h\", \"distance_km\", \"is_foreign\", \"device_age_days\"]";

fn regression_pipeline(name: &str, gates: &str, features: &str, train: &str) -> String {
    format!(
        "name = \"{name}\"\nmodel = \"amount\"\ngates = [{gates}]\n[data]\npath = \"data/tx.csv\"\nlabel = \"amount\"\ntask = \"regression\"\ntimestamp = \"event_ts\"\nexclude = [\"tx_id\", \"user_id\", \"merchant_id\", \"is_fraud\"]\n{features}\n[train]\nkind = \"builtin\"\n{train}\n[latency]\nconcurrency = 1\nrequests = 50\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_regression_trainers_gate_on_rmse_and_mae() {
    use greenbelt_train::{DenseMatrix, LinRegParams, linreg, metrics};
    let p = project().await;
    let file = p.write(
        "linreg.toml",
        &regression_pipeline(
            "lin",
            "\"rmse <= 200\", \"mae <= 150\", \"p99_ms <= 200\"",
            AMOUNT_FEATURES,
            "algorithm = \"linreg\"\nparams = { alpha = 0.5 }",
        ),
    );
    let r = p.run(&file).await;
    assert!(r.passed && r.promoted, "{}", r.text());
    assert_eq!(r.trainer["algorithm"], "linreg");
    assert!(!r.candidate_metrics.contains_key("roc_auc"));

    // The pipeline's numbers are the metrics module's on the same holdout:
    // refit the (deterministic) model here and evaluate it in f64.
    let def = PipelineDef::read(&file).unwrap();
    let table = greenbelt_control::pipeline::dataset::read(&def.data.path).unwrap();
    let data = greenbelt_control::pipeline::dataset::prepare(&table, &def.data).unwrap();
    let cols = data.features.len();
    let x = DenseMatrix::new(&data.train_x, data.train_y.len(), cols).unwrap();
    let model = linreg::fit(
        &x,
        &data.train_y,
        &LinRegParams {
            alpha: 0.5,
            ..LinRegParams::default()
        },
    )
    .unwrap();
    let hx = DenseMatrix::new(&data.holdout_x, data.holdout_y.len(), cols).unwrap();
    let pred = model.predict(&hx).unwrap();
    let rmse = metrics::rmse(&data.holdout_y, &pred).unwrap();
    let mae = metrics::mae(&data.holdout_y, &pred).unwrap();
    // Only the runtime's f32 arithmetic separates the two.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    assert!(
        close(r.candidate_metrics["rmse"], rmse),
        "{} vs {rmse}",
        r.candidate_metrics["rmse"]
    );
    assert!(
        close(r.candidate_metrics["mae"], mae),
        "{} vs {mae}",
        r.candidate_metrics["mae"]
    );
    let gate = |name: &str| r.gates.iter().find(|g| g.rule.starts_with(name)).unwrap();
    assert_eq!(gate("rmse").value, Some(r.candidate_metrics["rmse"]));
    assert_eq!(gate("mae").threshold, Some(150.0));
    // The registered version records the regressor's signature.
    let v1 = p.registry.version("amount", 1).await.unwrap();
    assert_eq!(v1.signature["outputs"][0]["name"], "prediction");
    assert_eq!(
        v1.signature["inputs"][0]["shape"],
        serde_json::json!([-1, cols])
    );
    assert_eq!(v1.params["algorithm"], "linreg");

    // A worse linear model (one weak feature) is refused against the champion.
    let worse = p.write(
        "worse.toml",
        &regression_pipeline(
            "weak",
            "\"rmse <= champion.rmse * 1.05\", \"mae <= champion.mae * 1.05\"",
            "features = [\"device_age_days\"]",
            "algorithm = \"linreg\"",
        ),
    );
    let r = p.run(&worse).await;
    assert!(!r.passed && !r.promoted, "{}", r.text());
    assert_eq!(r.champion.as_ref().map(|c| c.version), Some(1));
    assert_eq!(
        p.registry.alias("amount", "champion").await.unwrap(),
        Some(1)
    );

    // Boosted trees with the squared error (the native engine runs them).
    if greenbelt_runtime::Runtimes::probe(None).runs_trees() {
        let gbdt = p.write(
            "gbdt.toml",
            &regression_pipeline(
                "trees",
                "\"rmse <= champion.rmse * 1.5\"",
                AMOUNT_FEATURES,
                "algorithm = \"gbdt\"\nparams = { n_estimators = 60, seed = 4, subsample = 0.8 }",
            ),
        );
        let r = p.run(&gbdt).await;
        assert!(r.promoted, "{}", r.text());
        assert_eq!(r.trainer["objective"], "squared_error");
        // Same check against the metrics module, on the refit trees.
        let params = greenbelt_train::GbdtParams {
            n_estimators: 60,
            seed: 4,
            subsample: 0.8,
            ..Default::default()
        };
        let trees = greenbelt_train::gbdt::fit_regression(&x, &data.train_y, &params).unwrap();
        let pred = trees.predict(&hx).unwrap();
        let rmse = metrics::rmse(&data.holdout_y, &pred).unwrap();
        assert!(
            close(r.candidate_metrics["rmse"], rmse),
            "{} vs {rmse}",
            r.candidate_metrics["rmse"]
        );
        assert!(rmse < r.champion.as_ref().unwrap().metrics["rmse"] * 1.5);
    } else {
        eprintln!(
            "SKIP gbdt regression pipeline: no native engine and no ONNX Runtime (set ORT_DYLIB_PATH)"
        );
    }

    // Trainer and task must agree: named errors.
    for (algorithm, task, want) in [
        ("logreg", "regression", "use \"linreg\" or \"gbdt\""),
        ("linreg", "classification", "use \"logreg\" or \"gbdt\""),
    ] {
        let f = p.write(
            "mismatch.toml",
            &format!(
                "name = \"x\"\nmodel = \"amount\"\n[data]\npath = \"data/tx.csv\"\nlabel = \"amount\"\ntask = \"{task}\"\n[train]\nkind = \"builtin\"\nalgorithm = \"{algorithm}\"\n"
            ),
        );
        let err = PipelineDef::read(&f).unwrap_err().to_string();
        assert!(err.contains(algorithm) && err.contains(want), "{err}");
    }
}

/// `git` in `dir`, which must succeed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_records_the_git_revision_and_the_training_script() {
    let p = project().await;
    let d = p.dir.path();
    let builtin = p.write(
        "lr.toml",
        &format!(
            "name = \"lr\"\nmodel = \"fraud\"\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n[latency]\nconcurrency = 1\nrequests = 20\n"
        ),
    );
    // Not a git repository: no git entry.
    let r = p.run(&builtin).await;
    let v1 = p
        .registry
        .version("fraud", r.registered_version)
        .await
        .unwrap();
    assert_eq!(v1.lineage["code"]["algorithm"], "logreg", "{}", v1.lineage);
    assert!(v1.lineage["code"].get("git").is_none(), "{}", v1.lineage);

    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP git lineage: no git on PATH");
        return;
    }
    // A git work tree: the revision of HEAD, clean.
    std::fs::write(d.join(".gitignore"), "work/\nartifacts/\nregistry.db*\n").unwrap();
    git(d, &["init", "-q"]);
    git(d, &["add", "."]);
    git(d, &["commit", "-q", "-m", "pipeline"]);
    let head = git(d, &["rev-parse", "HEAD"]);
    let r = p.run(&builtin).await;
    let v = p
        .registry
        .version("fraud", r.registered_version)
        .await
        .unwrap();
    assert_eq!(
        v.lineage["code"]["git"],
        serde_json::json!({"revision": head, "dirty": false}),
        "{}",
        v.lineage
    );

    // An external command: its script's sha256, and a dirty tree once a
    // tracked file changes. The "training" copies v1's model.
    let model = v1.artifact_uri.strip_prefix("file://").unwrap();
    let script = format!("#!/bin/sh\ncp '{model}' \"$1\"\n");
    std::fs::write(d.join("train.sh"), &script).unwrap();
    git(d, &["add", "train.sh"]);
    git(d, &["commit", "-q", "-m", "script"]);
    let head = git(d, &["rev-parse", "HEAD"]);
    std::fs::write(
        d.join("lr.toml"),
        std::fs::read_to_string(&builtin).unwrap() + "\n",
    )
    .unwrap();
    let command = p.write(
        "cmd.toml",
        &format!(
            "name = \"sh\"\nmodel = \"fraud\"\n{DATA}\n[train]\nkind = \"command\"\ncommand = [\"sh\", \"train.sh\", \"{{output}}\"]\n[latency]\nconcurrency = 1\nrequests = 20\n"
        ),
    );
    let r = p.run(&command).await;
    let v = p
        .registry
        .version("fraud", r.registered_version)
        .await
        .unwrap();
    let code = &v.lineage["code"];
    assert_eq!(code["kind"], "command");
    assert_eq!(
        code["command"],
        serde_json::json!(["sh", "train.sh", "{output}"])
    );
    assert_eq!(
        code["scripts"],
        serde_json::json!([{
            "path": "train.sh",
            "sha256": greenbelt_registry::artifacts::sha256_hex(script.as_bytes()),
        }]),
        "{code}"
    );
    assert_eq!(code["git"]["revision"], head.as_str());
    assert_eq!(code["git"]["dirty"], true, "lr.toml was modified: {code}");
}

#[test]
fn every_example_pipeline_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("pipeline") && name.ends_with(".toml") {
            PipelineDef::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 5, "{n} example pipelines");
}

/// The project's `[[deployments]]` entry for model fraud: a canary that
/// holds at 10% until someone promotes it.
fn fraud_deployment() -> DeploymentConfig {
    let text = "[[deployments]]\nname = \"fraud\"\nalias = \"champion\"\n[deployments.rollout]\nsteps = [{ set_weight = 10 }, { pause = \"\" }]\n";
    greenbelt_serve::Config::from_toml_str(text, Path::new("greenbelt.toml"), std::iter::empty())
        .unwrap()
        .deployments
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_rollout_starts_a_canary_instead_of_moving_the_alias() {
    let p = project().await;
    let file = p.write(
        "canary.toml",
        &format!(
            "name = \"lr\"\nmodel = \"fraud\"\npromote = \"rollout\"\ndeployment = \"fraud\"\ngates = [\"auc >= 0.6\", \"auc >= champion.auc - 0.05\"]\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n[latency]\nconcurrency = 1\nrequests = 50\n"
        ),
    );
    // A deployment the project does not have is refused before any work.
    let err = p.run_on(&file, Vec::new()).await.unwrap_err().to_string();
    assert!(
        err.contains("deployment = \"fraud\" is not a [[deployments]] entry"),
        "{err}"
    );
    assert_eq!(p.registry.alias("fraud", "champion").await.unwrap(), None);

    // First version: nothing to canary against, so the alias moves at once.
    let r = p.run_on(&file, vec![fraud_deployment()]).await.unwrap();
    assert!(r.passed && r.promoted, "{}", r.text());
    assert_eq!(r.promotion.outcome, "alias_moved");
    assert_eq!(r.promotion.deployment.as_deref(), Some("fraud"));
    assert_eq!(
        p.registry.alias("fraud", "champion").await.unwrap(),
        Some(1)
    );

    // Second version: passes its gates, and a canary rollout starts.
    let r = p.run_on(&file, vec![fraud_deployment()]).await.unwrap();
    assert!(r.passed && !r.promoted, "{}", r.text());
    assert_eq!(r.registered_version, 2);
    assert_eq!(r.promotion.outcome, "rollout_started", "{}", r.text());
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["promotion"]["mode"], "rollout");
    assert!(r.text().contains("canary rollout"), "{}", r.text());
    let st = rollout::status(&p.registry, "fraud").await.unwrap();
    assert_eq!(Some(&st.rollout.id), r.promotion.rollout_id.as_ref());
    assert_eq!(
        (st.rollout.stable, st.rollout.candidate, st.rollout.weight),
        (1, 2, 10.0)
    );
    assert_eq!(st.rollout.phase, Phase::Paused);
    assert!(
        st.events
            .iter()
            .any(|e| e.event == "command" && e.detail["actor"] == "test"),
        "{:?}",
        st.events
    );
    // The alias waits for the rollout.
    assert_eq!(
        p.registry.alias("fraud", "champion").await.unwrap(),
        Some(1)
    );

    // A third version while that rollout is active: registered, not
    // released, and the error says how to start it by hand.
    let err = p
        .run_on(&file, vec![fraud_deployment()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("version 3 passed every gate")
            && err.contains("greenbelt rollout start fraud --version 3"),
        "{err}"
    );

    // The definition names what is missing.
    let bad = p.write(
        "bad.toml",
        &format!(
            "name = \"x\"\nmodel = \"fraud\"\npromote = \"rollout\"\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n"
        ),
    );
    let err = PipelineDef::read(&bad).unwrap_err().to_string();
    assert!(err.contains("needs deployment"), "{err}");
    let bad = p.write(
        "bad.toml",
        &format!(
            "name = \"x\"\nmodel = \"fraud\"\npromote = \"canary\"\n{DATA}\n[train]\nkind = \"builtin\"\nalgorithm = \"logreg\"\n"
        ),
    );
    let err = PipelineDef::read(&bad).unwrap_err().to_string();
    assert!(err.contains("promote"), "{err}");
}
