//! The `greenbelt` binary: parses arguments, builds state, starts servers.
//! Behaviour lives in the library crates.

mod bench;
mod drill_cmd;
mod feature_serving;
mod features_cmd;
mod pipeline_cmd;
mod quickstart;
mod registry_cmd;
mod rollout_cmd;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use greenbelt_serve::{Config, Server};

#[derive(Parser)]
#[command(
    name = "greenbelt",
    version,
    about = "Serve, release, feed and watch ML models in production"
)]
struct Cli {
    /// Log format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json, env = "GREENBELT_LOG_FORMAT")]
    log_format: LogFormat,
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
    let filter =
        EnvFilter::try_from_env("GREENBELT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let default = PathBuf::from("greenbelt.toml");
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None if default.is_file() => Some(default),
        None => None,
    };
    let mut config = Config::load(path.as_deref())?;
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

/// When the config names a registry or deployments: mount the registry and
/// rollout APIs and start one controller task per `[[deployments]]` entry
/// (follow the alias, run rollouts, keep shadows). Returns the tasks.
pub async fn attach_registry(
    server: &mut Server,
    config: &Config,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let deployments = config.deployments.clone();
    if deployments.is_empty() && config.registry.url.is_none() {
        return Ok(Vec::new());
    }
    let on_disk = server.state.repository.on_disk();
    if let Some(r) = deployments.iter().find(|r| on_disk.contains(&r.name)) {
        anyhow::bail!(
            "[[deployments]] name \"{}\" is also a model directory in the repository ({}); rename one of them",
            r.name,
            config.repository.path.join(&r.name).display()
        );
    }
    for d in &deployments {
        greenbelt_control::rollout::analysis::conditions(&d.rollout.analysis).map_err(|e| {
            anyhow::anyhow!("[[deployments]] \"{}\": rollout.analysis: {e}", d.name)
        })?;
    }
    let registry_config = &config.registry;
    let registry = registry_cmd::open(config, None)
        .await
        .context("opening the registry")?;
    let artifacts = greenbelt_registry::ArtifactStore::open(&registry_config.artifacts)?;
    let api = std::sync::Arc::new(greenbelt_registry::http::ApiState {
        registry: registry.clone(),
    });
    server.merge(greenbelt_registry::http::router(api.clone()));
    server.merge(greenbelt_control::rollout::http::router(
        std::sync::Arc::new(greenbelt_control::rollout::http::RolloutApi {
            api,
            deployments: deployments.clone(),
        }),
    ));
    let controller = std::sync::Arc::new(greenbelt_control::rollout::Controller::new(
        registry,
        artifacts,
        server.state.clone(),
        PathBuf::from(".greenbelt/cache"),
        std::time::Duration::from_millis(registry_config.poll_interval_ms),
    ));
    tracing::info!(registry = %greenbelt_serve::auth::redact_url(registry_config.url()), "registry API at /registry, rollouts at /admin/rollouts; deployments follow their aliases");
    Ok(controller.spawn(deployments, None))
}

/// Open the feature store, build the server with it, mount the registry
/// and feature APIs. Returns the server and its background tasks.
pub async fn build_server(
    config: &Config,
) -> anyhow::Result<(Server, Vec<tokio::task::JoinHandle<()>>)> {
    let features = feature_serving::open(config).await?;
    let mut server = Server::build_with(config.clone(), features.as_ref().map(|f| f.source()))
        .await
        .context("starting the server")?;
    let mut watchers = attach_registry(&mut server, config).await?;
    if let Some(f) = features {
        watchers.extend(feature_serving::attach(&mut server, f));
    }
    Ok((server, watchers))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let (server, watchers) = build_server(&config).await?;
    tracing::info!(
        http = ?server.http_addr(),
        grpc = ?server.grpc_addr(),
        "greenbelt serving"
    );
    server.run(shutdown_signal()).await?;
    for w in watchers {
        w.abort();
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let to_stdout = matches!(cli.command, Command::Serve(_));
    let _guard = init_logging(cli.log_format, to_stdout);
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
            Command::Serve(args) => serve(args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Registry(args) => registry_cmd::run(args).await,
            Command::Pipeline(args) => pipeline_cmd::run(args).await,
            Command::Features(args) => features_cmd::run(args).await,
            Command::Rollout(args) => rollout_cmd::run(args).await,
            Command::Shadow(args) => rollout_cmd::shadow(args).await,
            Command::Drill(args) => drill_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
