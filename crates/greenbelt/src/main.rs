//! The `greenbelt` binary: parses arguments, builds state, starts servers.
//! Behaviour lives in the library crates.

mod bench;
mod quickstart;

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
}

fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
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
    let server = Server::build(config).await.context("starting the server")?;
    tracing::info!(
        http = ?server.http_addr(),
        grpc = ?server.grpc_addr(),
        "greenbelt serving"
    );
    server.run(shutdown_signal()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _guard = init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "greenbelt failed");
        eprintln!("error: {e:#}");
    }
    result
}
