//! `greenbelt labels ingest FILE`: delayed labels to a running server.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send true labels for answered requests (CSV with id,label columns,
    /// or JSON lines {"id": ..., "label": ...}) to
    /// POST /v2/models/{model}/labels; prints how many joined a recorded
    /// prediction and the version's rolling accuracy / AUC / RMSE.
    Ingest {
        file: PathBuf,
        /// The model (or deployment) the predictions were asked of.
        #[arg(long)]
        model: String,
        /// The server's REST address.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        server: String,
        /// Token with the feature-writer role (when the server has tokens).
        #[arg(long, env = "GREENBELT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Ingest {
            file,
            model,
            server,
            token,
            json,
        } => {
            let labels = greenbelt_app::labels::read(&file)?;
            let got =
                greenbelt_app::labels::send(&server, &model, &labels, token.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&got)?);
                return Ok(());
            }
            println!(
                "sent {} labels to {model}: {} joined, {} unknown id (never seen, evicted or expired), {} row-count mismatch",
                got.sent, got.joined, got.unknown, got.mismatched
            );
            println!(
                "{:<8} {:>9} {:>9} {:>7} {:>9}",
                "version", "labelled", "accuracy", "AUC", "RMSE"
            );
            let f =
                |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
            for q in &got.quality {
                println!(
                    "{:<8} {:>9} {:>9} {:>7} {:>9}",
                    q["version"],
                    q["labelled"],
                    f(&q["accuracy"]),
                    f(&q["auc"]),
                    f(&q["rmse"])
                );
            }
            Ok(())
        }
    }
}
