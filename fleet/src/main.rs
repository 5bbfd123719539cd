//! `fv-fleet`: parse, resolve, run, print the error chain, exit.

use clap::Parser;
use fv_fleet::settings::{ServeArgs, Settings};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fv-fleet",
    version,
    about = "Keeps the fleet's results, statuses and heartbeats (MQTT) in SQLite or PostgreSQL and serves the dashboard with its history",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// More log (-v: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Publishes simulated units' results through a broker and measures how fast fv-fleet
    /// stores them (BENCHMARKS.md).
    Load(fv_fleet::load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose > 0 { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("fv_fleet={level},warn").into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Some(Command::Load(args)) => fv_fleet::load::run(args).await,
            None => {
                let settings = Settings::resolve(cli.serve)?;
                let (stop, shutdown) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("stopping: storing and acknowledging what has arrived");
                    let _ = stop.send(true);
                });
                fv_fleet::serve(settings, shutdown).await
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
