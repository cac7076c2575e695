//! `greenbelt drill bad-deploy`, `greenbelt drill pipeline-outage` and
//! `greenbelt drill failover`: arguments for `greenbelt_app::drill::bad_deploy`,
//! `greenbelt_app::pipeline_drill::pipeline_outage` and
//! `greenbelt_app::failover::failover`, and their reports.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use greenbelt_app::drill::{BadDeployOptions, FaultKind, bad_deploy};
use greenbelt_app::failover::{FailoverOptions, Objectives, failover};
use greenbelt_app::pipeline_drill::{self, PipelineOutageOptions, pipeline_outage};

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
    /// Feed a feature view as its batch pipeline, stop materializing, and
    /// measure detection, flagged serving, the backfill and recovery.
    PipelineOutage {
        /// The model that reads the view's feature service.
        #[arg(long)]
        model: String,
        /// The view to drill (default: the first online view with a freshness_sla).
        #[arg(long)]
        view: Option<String>,
        /// Feature definitions (default: the server config's [features] definitions).
        #[arg(long = "features", short = 'f')]
        features: Option<PathBuf>,
        /// Project config (the server's; default ./greenbelt.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The server's REST address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        server: String,
        /// How often the simulated pipeline appends and materializes.
        #[arg(long, default_value = "1s")]
        cadence: String,
        /// Entity keys written and read.
        #[arg(long, default_value_t = 20)]
        entities: usize,
        /// Concurrent load clients (a request every 50 ms each).
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Longest wait for each phase.
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Two regions on this machine (PostgreSQL primary + hot standby, Redis
    /// primary + replica, a server each, HAProxy in front): take region A
    /// down under load, promote B, measure detection, RTO, RPO and failed
    /// requests, then fail back to A.
    Failover(FailoverArgs),
}

#[derive(clap::Args)]
struct FailoverArgs {
    /// The ONNX model both regions serve.
    #[arg(long)]
    model: PathBuf,
    /// PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup, psql).
    #[arg(
        long,
        env = "GREENBELT_PG_BIN",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    pg_bin: PathBuf,
    /// The user PostgreSQL runs as when the drill runs as root.
    #[arg(long, default_value = "postgres")]
    pg_user: String,
    /// Predictions per second through the load balancer.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Registry writes per second (and as many feature pushes).
    #[arg(long, default_value_t = 10.0)]
    write_rate: f64,
    /// Steady load before region A goes down.
    #[arg(long, default_value = "4s")]
    steady: String,
    /// Load on region B before the fail-back.
    #[arg(long, default_value = "4s")]
    after: String,
    /// Longest wait for each step.
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// Recovery time objective: fail when the first prediction from region
    /// B comes later than this after the failure.
    #[arg(long)]
    rto: Option<String>,
    /// Recovery point objective: fail when acknowledged writes older than
    /// this before the failure are missing from region B.
    #[arg(long)]
    rpo: Option<String>,
    /// Shell commands that promote region B instead of the drill's own
    /// (docs/runbooks/failover.md's; they see PG_BIN, AS_POSTGRES,
    /// B_PGDATA, B_PGHOST, B_PGPORT, B_REDIS_HOST, B_REDIS_PORT, BALANCER,
    /// BALANCER_STATS, A_SERVER, B_SERVER, ...).
    #[arg(long)]
    promote_cmd: Option<String>,
    /// Keep the drill's directory (configs, logs, data) and say where.
    #[arg(long)]
    keep: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn duration(flag: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(text).with_context(|| format!("{flag} {text}"))
}

#[allow(clippy::too_many_arguments)]
async fn run_pipeline_outage(
    model: String,
    view: Option<String>,
    features: Option<PathBuf>,
    config: Option<PathBuf>,
    server: String,
    cadence: String,
    entities: usize,
    clients: usize,
    timeout: String,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = greenbelt_app::registry::load_config(config.as_deref())?;
    let definitions = match features.or_else(|| pipeline_drill::definitions_of(&cfg)) {
        Some(p) => p,
        None => bail!("no feature definitions: pass --features or set [features] definitions"),
    };
    let opts = PipelineOutageOptions {
        server,
        definitions,
        model,
        view,
        check_interval: pipeline_drill::check_interval_of(&cfg)?,
        cadence: duration("--cadence", &cadence)?,
        entities,
        clients,
        timeout: duration("--timeout", &timeout)?,
    };
    let progress = crate::progress::Progress::spinner("pipeline-outage drill");
    let report = pipeline_outage(&opts, &|line: &str| progress.line(line)).await;
    progress.finish();
    let report = report?;
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

fn millis(flag: &str, text: Option<String>) -> anyhow::Result<Option<i64>> {
    text.map(|t| Ok(i64::try_from(duration(flag, &t)?.as_millis())?))
        .transpose()
}

async fn run_failover(a: FailoverArgs) -> anyhow::Result<()> {
    let opts = FailoverOptions {
        greenbelt: std::env::current_exe().context("finding the greenbelt binary")?,
        model_file: a.model,
        pg_bin: a.pg_bin,
        pg_user: a.pg_user,
        rate: a.rate,
        write_rate: a.write_rate,
        steady: duration("--steady", &a.steady)?,
        after: duration("--after", &a.after)?,
        timeout: duration("--timeout", &a.timeout)?,
        objectives: Objectives {
            rto_ms: millis("--rto", a.rto)?,
            rpo_ms: millis("--rpo", a.rpo)?,
        },
        promote_cmd: a.promote_cmd,
        keep: a.keep,
    };
    let progress = crate::progress::Progress::spinner("failover drill");
    let report = failover(&opts, &|line: &str| progress.line(line)).await;
    progress.finish();
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(why) = report.failure() {
        bail!("drill failed: {why}");
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (kind, deployment, config, server, clients, slow, timeout, json) = match args.command {
        DrillCmd::BadDeploy {
            kind,
            deployment,
            config,
            server,
            clients,
            slow,
            timeout,
            json,
        } => (
            kind, deployment, config, server, clients, slow, timeout, json,
        ),
        DrillCmd::PipelineOutage {
            model,
            view,
            features,
            config,
            server,
            cadence,
            entities,
            clients,
            timeout,
            json,
        } => {
            return run_pipeline_outage(
                model, view, features, config, server, cadence, entities, clients, timeout, json,
            )
            .await;
        }
        DrillCmd::Failover(a) => return run_failover(a).await,
    };
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
    let progress = crate::progress::Progress::spinner("bad-deployment drill");
    let report = bad_deploy(&config, &opts, &|line: &str| progress.line(line)).await;
    progress.finish();
    let report = report?;
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
