//! `drover`: one disk image to a whole lab at once.
//!
//! This binary is the admin CLI: `drover image capture|restore|inspect|verify|list|rm|gc` work on
//! the image store inside the data directory (`./drover-data` unless `--data-dir` says
//! otherwise); `drover multicast send|receive` moves an image or a file to many machines at
//! once without the daemon. The daemon (`drover serve`) joins it in a later issue. The work itself is done by
//! the `imaging` crate; this crate parses arguments, draws progress and prints results (plain
//! text, or JSON with `--json`).
//!
//! Exit codes: 0 success; 1 an error (or `verify` found a bad chunk); 2 bad usage.

mod fmt;
mod image_cmd;
mod multicast;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default data directory, relative to the working directory.
pub(crate) const DEFAULT_DATA_DIR: &str = "./drover-data";

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "One disk image to a whole lab at once"
)]
struct Cli {
    /// Data directory: the image store lives in its `images/` folder.
    #[arg(long, global = true, env = "DROVER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Capture, restore and manage disk images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Send an image or file to many machines at once, or receive one (no daemon needed).
    #[command(subcommand)]
    Multicast(multicast::MulticastCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Image(cmd) => image_cmd::run(cmd, &cli.data_dir, cli.json),
        Command::Multicast(cmd) => {
            multicast::run(cmd, &cli.data_dir, cli.json).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                let msg = format!("{e:#}");
                println!("{}", serde_json::json!({ "error": msg }));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: `RUST_LOG` filters (default `warn`), `LOG_FORMAT=json` for JSON lines.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
