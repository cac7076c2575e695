//! `greenbelt drill bad-deploy`: arguments for
//! `greenbelt_app::drill::bad_deploy`, and its report.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use greenbelt_app::drill::{BadDeployOptions, FaultKind, bad_deploy};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DrillCmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Every request to the bad version fails (HTTP 500).
    Error,
    /// The bad version answers after a delay.
    Slow,
    /// The bad version answers quickly with wrong outputs.
    Wrong,
}

#[derive(Subcommand)]
enum DrillCmd {
    /// Release a broken version as a canary and measure detection and rollback.
    BadDeploy {
        /// How the version is broken.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Deployment to drill (default: the first in [[deployments]]).
        #[arg(long)]
        deployment: Option<String>,
        /// Project config (the server's; default ./greenbelt.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The server's REST address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        server: String,
        /// Concurrent load clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Delay of the slow kind.
        #[arg(long, default_value = "300ms")]
        slow: String,
        /// Give up waiting for the rollback after this long.
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let DrillCmd::BadDeploy {
        kind,
        deployment,
        config,
        server,
        clients,
        slow,
        timeout,
        json,
    } = args.command;
    let opts = BadDeployOptions {
        kind: match kind {
            Kind::Error => FaultKind::Error,
            Kind::Slow => FaultKind::Slow,
            Kind::Wrong => FaultKind::Wrong,
        },
        deployment,
        server,
        clients,
        slow: humantime::parse_duration(&slow).with_context(|| format!("--slow {slow}"))?,
        timeout: humantime::parse_duration(&timeout)
            .with_context(|| format!("--timeout {timeout}"))?,
    };
    let config = greenbelt_app::registry::load_config(config.as_deref())?;
    let report = bad_deploy(&config, &opts, &|line: &str| eprintln!("{line}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(why) = report.failure() {
        bail!("drill failed: {why}");
    }
    Ok(())
}
