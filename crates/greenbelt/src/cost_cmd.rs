//! `greenbelt cost ...`: what models cost. `report` reads a running
//! server's cost ledger (`GET /admin/cost`); `compare` prices two measured
//! `greenbelt bench --json` runs. Behaviour lives in `greenbelt_app::cost`.

use std::path::PathBuf;

use greenbelt_core::cost::GroupBy;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Totals, $ per 1M predictions and the top cost drivers of a running
    /// server, over the last --since (default: since it started).
    Report {
        /// REST base URL of the server.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// The window, e.g. 1h, 30m, 1d (kept up to 8 days).
        #[arg(long)]
        since: Option<String>,
        /// Group by model, version, deployment or resource.
        #[arg(long, default_value = "model")]
        by: GroupBy,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// $ per 1M predictions of two measured runs (`greenbelt bench --json`
    /// output files), the saving and where it came from.
    Compare {
        /// The run before (e.g. ONNX Runtime, batching off).
        run_a: PathBuf,
        /// The run after.
        run_b: PathBuf,
        /// Price both with this table (TOML, the fields of [cost.prices])
        /// instead of the one run A's server used.
        #[arg(long)]
        prices: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Report {
            url,
            since,
            by,
            json,
        } => {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?;
            let view = greenbelt_app::cost::fetch(&client, &url, since.as_deref(), by).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", greenbelt_app::cost::report_text(&view));
            }
        }
        Command::Compare {
            run_a,
            run_b,
            prices,
            json,
        } => {
            let prices = prices
                .map(|p| greenbelt_app::cost::read_prices(&p))
                .transpose()?;
            let (a, b, c) = greenbelt_app::cost::compare_files(&run_a, &run_b, prices.as_ref())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "run_a": a, "run_b": b, "comparison": c,
                    }))?
                );
            } else {
                print!("{}", greenbelt_app::cost::compare_text(&a, &b, &c));
            }
        }
    }
    Ok(())
}
