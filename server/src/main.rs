//! `drover`: one disk image to a whole lab at once.
//!
//! This binary is the daemon and the admin CLI: `drover serve` runs the server (inventory,
//! image store, HTTP API, wake-on-LAN); `drover machine|group|deploy|deployment|schedule|wake ...` talk to it over its API; `drover token
//! create` makes API tokens and `drover user` the dashboard's users on the server host; `drover image capture|restore|inspect|verify|
//! list|rm|gc|copy|mount|nbd|export|import` work on the image store inside the data directory (`./drover-data` unless
//! `--data-dir` says otherwise); `drover multicast send|receive` moves an image or a file to
//! many machines at once without the daemon. The work itself is done by the `imaging` and
//! `proto` crates; this crate drives them, parses arguments, draws progress and prints results
//! (plain text, or JSON with `--json`).
//!
//! Exit codes: 0 success; 1 an error (or `verify` found a bad chunk); 2 bad usage.

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

mod client;
mod deploy_cmd;
mod image_cmd;
mod image_open;
mod image_restore;
mod multicast;
mod progress;
mod schedule_cmd;
mod serve;
mod user_cmd;

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
    /// Data directory: the image store lives in its `images/` folder, the server's SQLite
    /// database beside it [default: ./drover-data].
    #[arg(long, global = true, env = "DROVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: inventory, image store, HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Machines in the server's inventory (over its API).
    #[command(subcommand)]
    Machine(client::MachineCommand),
    /// Groups of machines (over the server's API).
    #[command(subcommand)]
    Group(client::GroupCommand),
    /// Deploy an image to machines and groups (over the server's API).
    Deploy(deploy_cmd::DeployArgs),
    /// Capture a machine's disk over the network into a new image (through its agent).
    Capture(deploy_cmd::CaptureArgs),
    /// Deployments: list, show, start now, cancel.
    #[command(subcommand)]
    Deployment(deploy_cmd::DeploymentCommand),
    /// Scheduled redeploys and wake-ups: add, list, show, rm.
    #[command(subcommand)]
    Schedule(schedule_cmd::ScheduleCommand),
    /// Wake machines with wake-on-LAN (through the server's lab interface).
    Wake(client::WakeArgs),
    /// API tokens (on the server host).
    #[command(subcommand)]
    Token(serve::TokenCommand),
    /// The dashboard's users (on the server host).
    #[command(subcommand)]
    User(user_cmd::UserCommand),
    /// Capture, restore and manage disk images.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Send an image or file to many machines at once, or receive one (no daemon needed).
    #[command(subcommand)]
    Multicast(multicast::MulticastCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Serve(args) => ok(serve::serve(*args, cli.data_dir)),
        Command::Machine(cmd) => ok(client::machine(cmd, cli.json)),
        Command::Group(cmd) => ok(client::group(cmd, cli.json)),
        Command::Wake(args) => ok(client::wake(args, cli.json)),
        Command::Deploy(args) => ok(deploy_cmd::deploy(args, cli.json)),
        Command::Capture(args) => ok(deploy_cmd::capture(args, cli.json)),
        Command::Deployment(cmd) => ok(deploy_cmd::deployment(cmd, cli.json)),
        Command::Schedule(cmd) => ok(schedule_cmd::schedule(cmd, cli.json)),
        Command::Token(cmd) => ok(serve::token(cmd, cli.data_dir, cli.json)),
        Command::User(cmd) => ok(user_cmd::run(cmd, cli.data_dir, cli.json)),
        Command::Image(cmd) => image_cmd::run(cmd, &data_dir, cli.json),
        Command::Multicast(cmd) => ok(multicast::run(cmd, &data_dir, cli.json)),
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

/// Logs go to stderr: `RUST_LOG` filters (default `warn`; `info` for the daemon), `LOG_FORMAT=json` for JSON lines.
fn init_logging(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if daemon { "info,sqlx=warn" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
