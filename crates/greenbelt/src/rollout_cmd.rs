//! `greenbelt rollout ...` (reads and writes rollout state in the registry
//! database, which every serving replica follows) and `greenbelt shadow
//! report` (asks a running server for its shadow comparisons).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use greenbelt_control::rollout::watch::{Seen, WatchOptions, Watched};
use greenbelt_control::rollout::{self, Command, Phase, Rollout, Status, controller::wall_ms};
use greenbelt_serve::deployment::Strategy;

use greenbelt_app::registry::{actor, deployment as find_deployment, load_config, open};

#[derive(clap::Args)]
pub struct Args {
    /// Project config file (default: ./greenbelt.toml when it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Registry URL (overrides [registry] url).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Canary,
    BlueGreen,
}

#[derive(Subcommand)]
enum Cmd {
    /// Release a registered version on a deployment, with its configured strategy.
    Start {
        deployment: String,
        #[arg(long)]
        version: i64,
        /// Override the deployment's [rollout] strategy.
        #[arg(long, value_enum)]
        strategy: Option<StrategyArg>,
    },
    /// Show the current (or last) rollout: phase, weight, analysis, events.
    Status {
        deployment: String,
        /// Keep polling; print a block each time the step, weight, phase or
        /// analysis changes, until the rollout is promoted or aborted (exit
        /// 1 when aborted) or Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Time between polls with --watch (e.g. 500ms, 2s).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Skip the current pause or analysis wait (canary); switch the preview (blue/green).
    Promote {
        deployment: String,
        /// Skip every remaining step.
        #[arg(long)]
        full: bool,
    },
    /// Stop the rollout: all traffic back on the stable version.
    Abort { deployment: String },
    /// Hold the rollout where it is.
    Pause { deployment: String },
    /// Continue a paused rollout.
    Resume { deployment: String },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let registry = open(&config, args.url.as_deref()).await?;
    let who = actor(&config);
    let (deployment, cmd) = match args.command {
        Cmd::Start {
            deployment,
            version,
            strategy,
        } => {
            let dep = find_deployment(&config, &deployment)?;
            let strategy = strategy.map(|s| match s {
                StrategyArg::Canary => Strategy::Canary,
                StrategyArg::BlueGreen => Strategy::BlueGreen,
            });
            let r = rollout::start(&registry, dep, version, strategy, &who, wall_ms()).await?;
            return print_rollout(&r, args.json, "started");
        }
        Cmd::Status {
            deployment,
            watch: true,
            interval,
        } => return watch(&registry, &deployment, interval, args.json).await,
        Cmd::Status { deployment, .. } => {
            let st = rollout::status(&registry, &deployment).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            return Ok(());
        }
        Cmd::Promote { deployment, full } => (
            deployment,
            if full {
                Command::PromoteFull
            } else {
                Command::Promote
            },
        ),
        Cmd::Abort { deployment } => (deployment, Command::Abort),
        Cmd::Pause { deployment } => (deployment, Command::Pause),
        Cmd::Resume { deployment } => (deployment, Command::Resume),
    };
    let r = rollout::command(&registry, &deployment, cmd, &who, wall_ms()).await?;
    print_rollout(&r, args.json, "updated")
}

/// `rollout status --watch`: a block (or, with --json, a line of JSON) per
/// change until the rollout finishes or Ctrl-C.
async fn watch(
    registry: &greenbelt_registry::Registry,
    deployment: &str,
    interval: Duration,
    json: bool,
) -> anyhow::Result<()> {
    if interval < Duration::from_millis(10) {
        anyhow::bail!("--interval {interval:?} is too short; use at least 10ms");
    }
    let opts = WatchOptions {
        interval,
        ..WatchOptions::default()
    };
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let ended = rollout::watch::watch(registry, deployment, opts, ctrl_c, |seen| match seen {
        Seen::Changed(st) if json => match serde_json::to_string(st) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("warning: status not printable as JSON: {e}"),
        },
        Seen::Changed(st) => println!("{}", rollout::watch::block(&st.rollout, wall_ms())),
        Seen::PollFailed(e) => eprintln!("warning: {e}; retrying"),
    })
    .await?;
    match ended {
        Watched::Finished(r) if r.phase == Phase::Aborted => anyhow::bail!(
            "rollout {} was aborted: {}",
            r.id,
            r.reason.as_deref().unwrap_or("no reason recorded")
        ),
        Watched::Finished(r) => {
            if !json {
                println!("rollout {} finished: {:?}", r.id, r.phase);
            }
            Ok(())
        }
        Watched::Stopped => Ok(()),
    }
}

fn print_rollout(r: &Rollout, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "rollout {} {what}: {:?}, stable v{} → candidate v{}, canary weight {}%{}",
            r.id,
            r.phase,
            r.stable,
            r.candidate,
            r.weight,
            r.pause_reason
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn print_status(st: &Status) {
    let r = &st.rollout;
    println!("rollout    {}", r.id);
    println!("strategy   {:?}", r.spec.strategy);
    println!(
        "phase      {:?}{}",
        r.phase,
        r.pause_reason
            .as_deref()
            .map(|p| format!(" — {p}"))
            .unwrap_or_default()
    );
    println!(
        "versions   stable v{}, candidate v{}",
        r.stable, r.candidate
    );
    println!(
        "weight     {}% on the candidate (step {}/{})",
        r.weight,
        r.step.min(r.spec.steps.len()),
        r.spec.steps.len()
    );
    println!(
        "analysis   {} failed, {} passed in this step",
        r.failures, r.successes
    );
    if let Some(reason) = &r.reason {
        println!("reason     {reason}");
    }
    if !r.runs.is_empty() {
        println!("\nlast analysis runs:");
        for run in r.runs.iter().rev().take(5) {
            let vals: Vec<String> = ["requests", "error_rate", "p99_ms", "shadow_agreement"]
                .iter()
                .filter_map(|k| run.values.get(*k).map(|v| format!("{k}={v:.4}")))
                .collect();
            println!(
                "  {} {:?} {} {}",
                greenbelt_registry::format_us(run.at_ms.saturating_mul(1000)),
                run.verdict,
                vals.join(" "),
                run.notes.join("; ")
            );
        }
    }
    println!("\nevents:");
    for e in st
        .events
        .iter()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!(
            "  {} {:<16} {}",
            greenbelt_registry::format_us(e.at_us),
            e.event,
            e.detail
        );
    }
}

#[derive(clap::Args)]
pub struct ShadowArgs {
    #[command(subcommand)]
    command: ShadowCmd,
}

#[derive(Subcommand)]
enum ShadowCmd {
    /// Agreement, score differences, latency delta and the most different requests.
    Report {
        deployment: String,
        /// Token for a server with tokens (role viewer or better): shadow
        /// reports carry samples of request inputs.
        #[arg(long, env = "GREENBELT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The server's REST address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        server: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn shadow(args: ShadowArgs) -> anyhow::Result<()> {
    let ShadowCmd::Report {
        token,
        deployment,
        server,
        json,
    } = args.command;
    let reports =
        greenbelt_app::shadow::fetch_reports(&server, &deployment, token.as_deref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("deployment \"{deployment}\" has no shadow comparisons yet");
    }
    for r in &reports {
        let c = &r.counters;
        println!("shadow v{} of {}", r.version, r.deployment);
        println!(
            "  mirrored   {} compared, {} errors ({:.2}%), {} dropped (queue full)",
            c.compared,
            c.errors,
            r.error_rate * 100.0,
            c.dropped
        );
        println!("  agreement  {:.4} of {} rows", r.agreement, c.rows);
        println!(
            "  |diff|     mean {:.3e}  p99 {:.3e}  max {:.3e}",
            r.abs_diff.mean, r.abs_diff.p99, r.abs_diff.max
        );
        println!(
            "  rel diff   mean {:.3e}  p99 {:.3e}  max {:.3e}",
            r.rel_diff.mean, r.rel_diff.p99, r.rel_diff.max
        );
        println!(
            "  latency    primary mean {:.3} ms, shadow mean {:.3} ms (delta {:+.3} ms); p99 {:.3} vs {:.3} ms",
            r.latency.primary_mean_ms,
            r.latency.shadow_mean_ms,
            r.latency.delta_mean_ms,
            r.latency.primary_p99_ms,
            r.latency.shadow_p99_ms
        );
        for s in r.worst.iter().take(5) {
            println!(
                "  worst      request {} max |diff| {:.4} rows disagreeing {}",
                s.request_id, s.max_abs_diff, s.rows_disagree
            );
        }
    }
    Ok(())
}
