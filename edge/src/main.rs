//! `fv-edge`: the FractuVision edge daemon's command line.
//!
//! Exit codes: 0 every input succeeded, 1 some input failed (its line says why),
//! 2 the command itself failed.

use clap::{Parser, Subcommand};
use fv_core::imaging::DecodeOptions;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fv-edge", version, about = "FractuVision at the X-ray unit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode images as the pipeline would and print one JSON line per input.
    Inspect {
        /// Images (JPEG, PNG, TIFF).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Refuse images with more pixels than this, before decoding them.
        #[arg(long, default_value_t = DecodeOptions::DEFAULT_MAX_PIXELS)]
        max_pixels: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(all_ok) => std::process::exit(if all_ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("fv-edge: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Inspect { files, max_pixels } => {
            let options = DecodeOptions { max_pixels };
            let mut out = std::io::stdout().lock();
            let mut all_ok = true;
            for f in files {
                let line = fv_edge::inspect::inspect(&f, &options);
                all_ok &= line.ok;
                let written = writeln!(out, "{}", serde_json::to_string(&line)?);
                if let Err(e) = written {
                    // A closed pipe (`| head`) ends the run quietly, as ripgrep does.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(all_ok);
                    }
                    return Err(e.into());
                }
            }
            Ok(all_ok)
        }
    }
}
