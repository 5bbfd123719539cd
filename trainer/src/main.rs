//! `fv-train`: the FractuVision trainer's command line.
//!
//! Exit codes: 0 success, 2 error (the message names the input and the fix).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fv_train::data::check::DataCheckReport;
use fv_train::data::{ClassificationSplitConfig, FracAtlas};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fv-train",
    version,
    about = "Train, evaluate and export FractuVision's fracture models"
)]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with the dataset.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Load FracAtlas, check it, and report its classes, splits and flaws.
    Check {
        /// The FracAtlas folder in its published layout.
        #[arg(long, env = "FV_DATA", value_name = "DIR")]
        data: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Seed of the non-fractured hold-out shuffle.
        #[arg(long, default_value_t = ClassificationSplitConfig::default().seed)]
        seed: u64,
        /// Non-fractured images held out for validation (the study: 163).
        #[arg(long, default_value_t = ClassificationSplitConfig::default().valid_non_fractured)]
        valid_non_fractured: usize,
        /// Non-fractured images held out for test (the study: 200).
        #[arg(long, default_value_t = ClassificationSplitConfig::default().test_non_fractured)]
        test_non_fractured: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("fv-train: error: {e:#}");
        std::process::exit(2);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data {
            command:
                DataCommand::Check {
                    data,
                    json,
                    seed,
                    valid_non_fractured,
                    test_non_fractured,
                },
        } => {
            let atlas = FracAtlas::open(&data)
                .with_context(|| format!("loading FracAtlas from {}", data.display()))?;
            let config = ClassificationSplitConfig {
                seed,
                valid_non_fractured,
                test_non_fractured,
            };
            let split = atlas.classification_split(&config)?;
            let report = DataCheckReport::new(&atlas, config, &split);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_table());
            }
            Ok(())
        }
    }
}
