//! The `greenbelt` binary: parses arguments, calls the library crates
//! (`greenbelt-app` above all) and prints. Nothing else lives here.

mod autoscale_cmd;
mod bench;
mod config_cmd;
mod config_reference_cmd;
mod cost_cmd;
mod drift_cmd;
mod drill_cmd;
mod features_cmd;
mod labels_cmd;
mod optimize_cmd;
mod pipeline_cmd;
mod progress;
mod quickstart;
mod registry_cmd;
mod rollout_cmd;
mod score_cmd;
mod slo_cmd;

use std::path::PathBuf;

/// The allocator (see the `mimalloc` feature in Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use greenbelt_app::App;
use greenbelt_serve::Config;

const EXAMPLES: &str = "\
Examples:
  greenbelt quickstart                        build a demo project and serve it
  greenbelt serve -c greenbelt.toml           serve a project
  greenbelt config check                      validate greenbelt.toml and what it names
  greenbelt registry register fraud --file model.onnx
  greenbelt rollout start fraud --version 2   release version 2 as a canary
  greenbelt bench --model fraud --concurrency 16 --duration 10
  greenbelt features materialize --start 2026-01-01T00:00:00Z --end 2026-02-01T00:00:00Z
  greenbelt score --model models:/fraud@champion -i in.parquet -o out.parquet
  greenbelt cost report --by model
  greenbelt completions bash > /etc/bash_completion.d/greenbelt

Every command has --help; docs/ has the guides.";

#[derive(Parser)]
#[command(
    name = "greenbelt",
    version,
    about = "Serve, release, feed and watch ML models in production",
    after_help = EXAMPLES
)]
struct Cli {
    /// Log format: text when the log goes to a terminal, else JSON (one
    /// object a line).
    #[arg(long, global = true, value_enum, env = "GREENBELT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over REST and gRPC (Open Inference Protocol V2).
    Serve(ServeArgs),
    /// Lay out a demo repository with a bundled model, serve it and send a first request.
    Quickstart(quickstart::Args),
    /// Drive a running server with load and report throughput and latency.
    Bench(bench::Args),
    /// The model registry: versions, aliases, history, rollback.
    Registry(registry_cmd::Args),
    /// Promotion pipelines: train, validate, gate, register, promote.
    Pipeline(pipeline_cmd::Args),
    /// The feature store: apply, plan, validate, materialize, historical, canary.
    Features(features_cmd::Args),
    /// Releases: start, watch and steer canary and blue/green rollouts.
    Rollout(rollout_cmd::Args),
    /// Shadow traffic: compare a deployment's shadows with its primary.
    Shadow(rollout_cmd::ShadowArgs),
    /// Incident drills, each one command with a measured report.
    Drill(drill_cmd::Args),
    /// Service-level objectives: generate Prometheus rules and alerts.
    Slo(slo_cmd::Args),
    /// Cost: a server's report by model and resource, and savings between two bench runs.
    Cost(cost_cmd::Args),
    /// Autoscaling: replay a request-rate trace through the recommender.
    Autoscale(autoscale_cmd::Args),
    /// Delayed labels: send true labels for answered requests to a server.
    Labels(labels_cmd::Args),
    /// Data drift: compare a dataset with a reference, column by column.
    Drift(drift_cmd::Args),
    /// Cheaper versions of a model (quantization, distillation), judged by the promotion gates.
    Optimize(optimize_cmd::Args),
    /// Batch scoring: run a model over a Parquet or CSV file (or partitions of them).
    Score(score_cmd::Args),
    /// Check the project's configuration files and print the effective configuration.
    Config(config_cmd::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (greenbelt.1 and one per subcommand) to a directory.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, default_value = "man")]
        dir: PathBuf,
    },
    /// Print (or write) the configuration reference: every key of every
    /// file, its type, default, environment variable and meaning.
    ConfigReference(config_reference_cmd::Args),
}

/// `greenbelt man`: one page for the binary and one per subcommand
/// (greenbelt-serve.1, ...), from the same definitions as `--help`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = 0;
    let mut page = |c: clap::Command, name: String| -> anyhow::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.clone())
            .render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
        written += 1;
        Ok(())
    };
    page(cmd.clone(), "greenbelt".into())?;
    for sub in cmd.get_subcommands() {
        page(sub.clone(), format!("greenbelt-{}", sub.get_name()))?;
    }
    eprintln!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Model repository directory (overrides [repository] path).
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// REST listen address (overrides [server] http_addr).
    #[arg(long)]
    http_addr: Option<String>,
    /// gRPC listen address (overrides [server] grpc_addr; "" disables gRPC).
    #[arg(long)]
    grpc_addr: Option<String>,
    /// Listen on a non-loopback address with no tokens configured (only when
    /// something in front authenticates; same as [auth] insecure = true).
    #[arg(long)]
    insecure: bool,
}

/// Logs go to stdout for `serve` (one JSON object a line) and to stderr for
/// commands whose stdout is their report.
fn init_logging(format: LogFormat, to_stdout: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = if to_stdout {
        tracing_appender::non_blocking(std::io::stdout())
    } else {
        tracing_appender::non_blocking(std::io::stderr())
    };
    greenbelt_serve::reqlog::set_output(greenbelt_serve::reqlog::Output {
        stderr: !to_stdout,
        text: matches!(format, LogFormat::Text),
    });
    let filter =
        EnvFilter::try_from_env("GREENBELT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: a log file gets plain text.
    let terminal = {
        use std::io::IsTerminal;
        if to_stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = greenbelt_app::registry::load_config(args.config.as_deref())?;
    if let Some(p) = &args.model_repository {
        config.repository.path = p.clone();
    }
    if let Some(a) = &args.http_addr {
        config.server.http_addr = a.clone();
    }
    if let Some(a) = &args.grpc_addr {
        config.server.grpc_addr = a.clone();
    }
    if args.insecure {
        config.auth.insecure = true;
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    App::build(config).await?.run(shutdown_signal()).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let to_stdout = matches!(cli.command, Command::Serve(_));
    let format = cli.log_format.unwrap_or_else(|| {
        use std::io::IsTerminal;
        let terminal = if to_stdout {
            std::io::stdout().is_terminal()
        } else {
            std::io::stderr().is_terminal()
        };
        if terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    });
    let _guard = init_logging(format, to_stdout);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            // Its own exit codes: 3 for drift past --fail-share, 2 for errors.
            Command::Drift(args) => return Ok(drift_cmd::run(args).await),
            // Exit 2 on errors, like drift.
            Command::Score(args) => return Ok(score_cmd::run(args).await),
            Command::Serve(args) => serve(args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Registry(args) => registry_cmd::run(args).await,
            Command::Pipeline(args) => pipeline_cmd::run(args).await,
            Command::Features(args) => features_cmd::run(args).await,
            Command::Rollout(args) => rollout_cmd::run(args).await,
            Command::Shadow(args) => rollout_cmd::shadow(args).await,
            Command::Drill(args) => drill_cmd::run(args).await,
            Command::Slo(args) => slo_cmd::run(args).await,
            Command::Cost(args) => cost_cmd::run(args).await,
            Command::Autoscale(args) => autoscale_cmd::run(args).await,
            Command::Labels(args) => labels_cmd::run(args).await,
            Command::Optimize(args) => optimize_cmd::run(args).await,
            Command::Config(args) => config_cmd::run(args).await,
            Command::Completions { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "greenbelt", &mut std::io::stdout());
                Ok(())
            }
            Command::Man { dir } => write_man_pages(&dir),
            Command::ConfigReference(args) => config_reference_cmd::run(args),
        }
        .map(|()| std::process::ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
