//! `greenbelt optimize quantize`: a cheaper version of a model, judged
//! against it by the promotion gates and (with a registry) registered with
//! lineage to it. Progress on stderr, the report on stdout (`--json` for
//! machines); exits non-zero when a gate fails (the version stays
//! registered, tagged `rejected`; aliases never move).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use greenbelt_app::registry::load_config;
use greenbelt_control::optimize::{self, HoldoutSpec, Judge, LatencySpec, Quantization, Report};
use greenbelt_control::pipeline::definition::Task;
use greenbelt_registry::ModelRef;

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

/// How the derived model is judged (shared by every optimize command).
#[derive(clap::Args)]
struct JudgeArgs {
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
    /// A gate rule, e.g. "accuracy >= parent.accuracy - 0.01" (repeatable;
    /// replaces the defaults).
    #[arg(long = "gate")]
    gates: Vec<String>,
    /// Timed single-row calls per model.
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

impl JudgeArgs {
    fn judge(&self) -> anyhow::Result<Judge> {
        let holdout = match (&self.data, &self.label) {
            (Some(path), Some(label)) => Some(HoldoutSpec {
                path: path.clone(),
                label: label.clone(),
                features: self.features.clone(),
            }),
            (None, None) => None,
            _ => bail!("--data and --label go together: the holdout file and its label column"),
        };
        if self.requests == 0 {
            bail!("--requests must be at least 1");
        }
        if self.batch_sizes.contains(&0) {
            bail!("--batch-sizes: every batch size must be at least 1");
        }
        Ok(Judge {
            holdout,
            task: self.task.map(|t| match t {
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
    judge: JudgeArgs,
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
    }
}

fn progress() -> Arc<dyn Fn(&str) + Send + Sync> {
    Arc::new(|line: &str| eprintln!("{line}"))
}

async fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    let mode = match a.mode {
        Mode::Int8 => Quantization::Int8,
        Mode::Fp16 => Quantization::Fp16,
    };
    let judge = a.judge.judge()?;
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
