//! `greenbelt config-reference`: print (or write) the configuration
//! reference, `docs/configuration.md`, generated from the config types.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Write the reference here (e.g. docs/configuration.md) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = greenbelt_app::config_reference::reference();
    match args.output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
