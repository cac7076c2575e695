//! `greenbelt autoscale simulate`: replay a request-rate trace through the
//! autoscaler's recommender and report (and plot) what it would have done.

use std::path::PathBuf;

use greenbelt_app::autoscale_sim::{SimOptions, parse_trace, simulate};
use greenbelt_core::autoscale::{Algorithm, Policy};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AlgorithmArg {
    Kpa,
    Hpa,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Replay a `time_s,rps` CSV trace through the recommender; print the
    /// time to react to the spike and the over/under-provisioning shares.
    Simulate {
        /// The trace: CSV with columns time_s,rps (header optional).
        #[arg(long)]
        trace: PathBuf,
        /// Write the plot (SVG) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON (every evaluation included).
        #[arg(long)]
        json: bool,
        /// `kpa` (Knative) or `hpa` (Kubernetes HPA v2).
        #[arg(long, value_enum, default_value_t = AlgorithmArg::Kpa)]
        algorithm: AlgorithmArg,
        /// Requests per second one replica serves at 100 %.
        #[arg(long, default_value_t = 100.0)]
        target: f64,
        /// Share of the target to aim for (Knative's default 0.7).
        #[arg(long, default_value_t = 0.7)]
        utilization: f64,
        #[arg(long, default_value_t = 1)]
        min_replicas: u32,
        #[arg(long, default_value_t = 100)]
        max_replicas: u32,
        /// Time between evaluations (the server's [autoscale] interval).
        #[arg(long, default_value = "2s")]
        step: humantime::Duration,
        /// How long a new replica takes to become ready.
        #[arg(long, default_value = "0s")]
        startup: humantime::Duration,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Simulate {
        trace,
        out,
        json,
        algorithm,
        target,
        utilization,
        min_replicas,
        max_replicas,
        step,
        startup,
    } = args.command;
    let text = std::fs::read_to_string(&trace)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", trace.display()))?;
    let points = parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    let options = SimOptions {
        policy: Policy {
            algorithm: match algorithm {
                AlgorithmArg::Kpa => Algorithm::Kpa,
                AlgorithmArg::Hpa => Algorithm::Hpa,
            },
            target,
            target_utilization: utilization,
            min_replicas,
            max_replicas,
            ..Policy::default()
        },
        step: step.into(),
        startup: startup.into(),
    };
    let report = simulate(&points, &options)?;
    if let Some(path) = &out {
        std::fs::write(path, report.svg())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
