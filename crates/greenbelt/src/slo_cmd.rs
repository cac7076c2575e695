//! `greenbelt slo ...`: SLOs from greenbelt.toml into Prometheus rules.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print (or write) the Grafana dashboard for Greenbelt's metrics
    /// (import it and pick a Prometheus data source).
    Dashboard {
        /// Write the dashboard here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print (or write) Prometheus recording rules and burn-rate, saturation,
    /// freshness, canary and model-load alerts for the `[[slo]]`s of the
    /// config, and the budget burn-rate alerts of its `[[budget]]`s.
    Rules {
        /// Project config file (default: ./greenbelt.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the rules here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Prefix of every alert's runbook_url (a link to docs/runbooks in
        /// your copy of the repository, or a wiki).
        #[arg(long, default_value = "docs/runbooks")]
        runbook_url_base: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Dashboard { out } => {
            let text = serde_json::to_string_pretty(&greenbelt_serve::grafana::dashboard())? + "\n";
            match out {
                Some(path) => std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Rules {
            config,
            out,
            runbook_url_base,
        } => {
            let config = greenbelt_app::registry::load_config(config.as_deref())?;
            let rules = greenbelt_serve::slo::prometheus_rules(&config.slo, &runbook_url_base)
                + &greenbelt_serve::cost::budget::prometheus_rules(
                    &config.budget,
                    &runbook_url_base,
                );
            match out {
                Some(path) => {
                    std::fs::write(&path, rules)
                        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                    eprintln!(
                        "wrote {} ({} SLOs, {} budgets); check it with `promtool check rules {}`",
                        path.display(),
                        config.slo.len(),
                        config.budget.len(),
                        path.display()
                    );
                }
                None => print!("{rules}"),
            }
            Ok(())
        }
    }
}
