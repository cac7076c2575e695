//! `greenbelt optimize quantize|distill`: a cheaper version of a model,
//! judged against it by the promotion gates and (with a registry)
//! registered with lineage to it. Progress on stderr, the report on stdout (`--json` for
//! machines); exits non-zero when a gate fails (the version stays
//! registered, tagged `rejected`; aliases never move).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use greenbelt_app::registry::load_config;
use greenbelt_control::optimize::distill::DistillSpec;
use greenbelt_control::optimize::{self, HoldoutSpec, Judge, LatencySpec, Quantization, Report};
use greenbelt_control::pipeline::definition::Task;
use greenbelt_registry::ModelRef;
use greenbelt_train::distill::Student;
use greenbelt_train::{GbdtParams, LinRegParams};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Quantize a model (int8 dynamic, or float16 storage), compare it with
    /// its parent and register it as a new version.
    Quantize(QuantizeArgs),
    /// Train a student (gbdt or logreg) on a binary teacher's probabilities,
    /// compare it with the teacher and register it as a new version.
    Distill(DistillArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum StudentArg {
    /// Boosted regression trees on the teacher's logit, with a sigmoid head.
    Gbdt,
    /// Ridge regression on the teacher's logit, exported as a logistic regression.
    Logreg,
}

#[derive(clap::Args)]
struct DistillArgs {
    /// The teacher in the registry: NAME, NAME@ALIAS or NAME:VERSION (a
    /// binary classifier).
    #[arg(long)]
    teacher: String,
    #[arg(long, value_enum)]
    student: StudentArg,
    /// Training rows (CSV or Parquet); the student learns the teacher's
    /// probabilities on them.
    #[arg(long)]
    data: PathBuf,
    /// The label column of --data (used only to measure teacher and student).
    #[arg(long)]
    label: String,
    /// The model's input columns in order, comma-separated (default: the
    /// teacher's recorded features, else every numeric column but the label).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Rows to judge on (default: a seeded 20% of --data, kept out of training).
    #[arg(long)]
    holdout: Option<PathBuf>,
    /// gbdt: boosting rounds.
    #[arg(long, default_value_t = 100)]
    n_estimators: usize,
    /// gbdt: tree depth.
    #[arg(long, default_value_t = 3)]
    max_depth: usize,
    /// gbdt: shrinkage.
    #[arg(long, default_value_t = 0.1)]
    learning_rate: f64,
    /// logreg: L2 penalty of the ridge fit.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    #[command(flatten)]
    gates: GateArgs,
    /// Registry URL (overrides [registry] url).
    #[arg(long)]
    registry: Option<String>,
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// int8 dynamic quantization of MatMul/Gemm weights (DynamicQuantizeLinear + MatMulInteger).
    Int8,
    /// float16 storage of the weights, with casts back to float32.
    Fp16,
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    Classification,
    Regression,
}

/// The holdout a quantized model is judged on.
#[derive(clap::Args)]
struct DataArgs {
    /// Labelled holdout rows (CSV or Parquet) for quality metrics and
    /// agreement; without it only size and latency are compared.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The label column of --data (class index or target value).
    #[arg(long)]
    label: Option<String>,
    /// The model's input columns in order, comma-separated (default: the
    /// parent's recorded features, else every numeric column but the label).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Default: read from the model's outputs.
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
}

impl DataArgs {
    fn holdout(&self) -> anyhow::Result<Option<HoldoutSpec>> {
        match (&self.data, &self.label) {
            (Some(path), Some(label)) => Ok(Some(HoldoutSpec {
                path: path.clone(),
                label: label.clone(),
                features: self.features.clone(),
            })),
            (None, None) => Ok(None),
            _ => bail!("--data and --label go together: the holdout file and its label column"),
        }
    }
}

/// The gates and the latency test (shared by every optimize command).
#[derive(clap::Args)]
struct GateArgs {
    /// A gate rule, e.g. "accuracy >= parent.accuracy - 0.01" (repeatable;
    /// replaces the defaults).
    #[arg(long = "gate")]
    gates: Vec<String>,
    /// Timed calls per model and batch size.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Untimed calls per model first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Rows per call of the latency test, comma-separated; batch 1 is the
    /// one the gates see (p50_ms, p99_ms), others are reported as
    /// p50_ms_batch<N>, p99_ms_batch<N>.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch_sizes: Vec<usize>,
}

impl GateArgs {
    fn judge(&self, holdout: Option<HoldoutSpec>, task: Option<TaskArg>) -> anyhow::Result<Judge> {
        if self.requests == 0 {
            bail!("--requests must be at least 1");
        }
        if self.batch_sizes.contains(&0) {
            bail!("--batch-sizes: every batch size must be at least 1");
        }
        Ok(Judge {
            holdout,
            task: task.map(|t| match t {
                TaskArg::Classification => Task::Classification,
                TaskArg::Regression => Task::Regression,
            }),
            gates: (!self.gates.is_empty()).then(|| self.gates.clone()),
            latency: LatencySpec {
                requests: self.requests,
                warmup: self.warmup,
                batch_sizes: self.batch_sizes.clone(),
            },
        })
    }
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// The registry model: NAME (newest version), NAME@ALIAS or NAME:VERSION.
    model: Option<String>,
    #[arg(long, value_enum)]
    mode: Mode,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    gates: GateArgs,
    /// A plain ONNX file instead of a registry model (with --output).
    #[arg(long)]
    model_file: Option<PathBuf>,
    /// Where to write the quantized file (with --model-file).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Registry URL (overrides [registry] url).
    #[arg(long)]
    registry: Option<String>,
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Quantize(a) => quantize(a).await,
        Cmd::Distill(a) => distill(a).await,
    }
}

async fn distill(a: DistillArgs) -> anyhow::Result<()> {
    let student = match a.student {
        StudentArg::Gbdt => Student::Gbdt(GbdtParams {
            n_estimators: a.n_estimators,
            max_depth: a.max_depth,
            learning_rate: a.learning_rate,
            ..GbdtParams::default()
        }),
        StudentArg::Logreg => Student::Logreg(LinRegParams {
            alpha: a.alpha,
            ..LinRegParams::default()
        }),
    };
    let spec = DistillSpec {
        teacher: a.teacher.parse::<ModelRef>()?,
        student,
        data: HoldoutSpec {
            path: a.data.clone(),
            label: a.label.clone(),
            features: a.features.clone(),
        },
        holdout: a.holdout.clone(),
        judge: a.gates.judge(None, None)?,
    };
    let config = load_config(a.config.as_deref())?;
    let ctx = greenbelt_app::optimize::context(&config, a.registry.as_deref(), progress()).await?;
    let report = optimize::distill::distill_registered(&ctx, &spec).await?;
    print(&report, a.json)
}

fn progress() -> Arc<dyn Fn(&str) + Send + Sync> {
    Arc::new(|line: &str| eprintln!("{line}"))
}

async fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    let mode = match a.mode {
        Mode::Int8 => Quantization::Int8,
        Mode::Fp16 => Quantization::Fp16,
    };
    let judge = a.gates.judge(a.data.holdout()?, a.data.task)?;
    let config = load_config(a.config.as_deref())?;
    let report = match (&a.model, &a.model_file, &a.output) {
        (Some(model), None, None) => {
            let reference: ModelRef = model.parse()?;
            let ctx = greenbelt_app::optimize::context(&config, a.registry.as_deref(), progress())
                .await?;
            optimize::quantize_registered(&ctx, &reference, mode, &judge).await?
        }
        (None, Some(input), Some(output)) => {
            if a.registry.is_some() {
                bail!("--registry is for registry models; --model-file works on plain files");
            }
            let runtimes = greenbelt_app::optimize::runtimes(&config).await?;
            let say = progress();
            optimize::quantize_file(&runtimes, input, output, mode, &judge, say.as_ref())
                .await
                .with_context(|| format!("quantizing {}", input.display()))?
        }
        (None, Some(_), None) => {
            bail!("--model-file needs --output (where to write the quantized model)")
        }
        (Some(_), Some(_), _) => bail!("give a registry MODEL or --model-file, not both"),
        (Some(_), None, Some(_)) => bail!(
            "--output is for --model-file; a registry model's result is registered as a new version"
        ),
        (None, None, _) => bail!(
            "give a registry MODEL (NAME, NAME@ALIAS or NAME:VERSION) or --model-file FILE --output FILE"
        ),
    };
    print(&report, a.json)
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", report.text());
    }
    if !report.comparison.passed {
        bail!(
            "a gate failed: {} {}",
            report.derived.label(),
            if report.registered {
                "was registered (tagged rejected) but must not be promoted"
            } else {
                "was written but did not pass"
            }
        );
    }
    Ok(())
}
