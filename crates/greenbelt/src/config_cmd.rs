//! `greenbelt config check [FILE]`: the arguments and the printing; the
//! checks are `greenbelt_app::config_check`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use greenbelt_app::config_check::{check, text};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate greenbelt.toml (default: ./greenbelt.toml) and the files it
    /// names, then print the effective configuration.
    Check {
        /// The project config file (default: ./greenbelt.toml when it
        /// exists, else the built-in defaults).
        file: Option<PathBuf>,
        /// Pipeline definition files to check as well (repeatable).
        #[arg(long = "pipeline")]
        pipelines: Vec<PathBuf>,
        /// Only report the checks, not the effective configuration.
        #[arg(long, short)]
        quiet: bool,
        /// Print the report (and the effective configuration) as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Cmd::Check {
        file,
        pipelines,
        quiet,
        json,
    } = args.command;
    let report = check(file.as_deref(), &pipelines);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report, quiet));
    }
    if !report.ok {
        let n = report.checked.iter().filter(|c| c.error.is_some()).count();
        bail!("{n} of {} files have errors", report.checked.len());
    }
    Ok(())
}
