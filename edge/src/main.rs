//! `fv-edge`: the FractuVision edge daemon's command line.
//!
//! Exit codes: 0 every input succeeded, 1 some input failed (its line says why),
//! 2 the command itself failed.

use clap::{Parser, Subcommand};
use fv_core::imaging::DecodeOptions;
use fv_edge::config::{Layer, MqttSettings, ReadFlags};
use fv_edge::pipeline::{file_source, Pipeline, PipelineConfig};
use fv_runtime::engine::EngineKind;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "fv-edge", version, about = "FractuVision at the X-ray unit")]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
    /// Read images and print one result (JSON) per input, one per line.
    Infer {
        /// Images: DICOM, PNG, TIFF or JPEG.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        read: ReadFlags,
    },
    /// The daemon: watch a folder, read each image, write local results, publish over MQTT.
    Run(Box<RunArgs>),
    /// Time each model on each engine and the whole path, side by side (see BENCHMARKS.md).
    Bench {
        /// Models directory.
        #[arg(long, value_name = "DIR", default_value = "models")]
        models: PathBuf,
        /// Timed runs per measurement.
        #[arg(long, value_name = "N", default_value_t = 50)]
        iterations: usize,
        /// Untimed runs first.
        #[arg(long, value_name = "N", default_value_t = 3)]
        warmup: usize,
        /// Engines (ONNX Runtime is skipped with a note when ORT_DYLIB_PATH cannot load).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [EngineKind::Tract, EngineKind::OrtCpu])]
        engines: Vec<EngineKind>,
        /// Threads each engine may use for one inference (the same count for tract and ONNX
        /// Runtime compares them fairly).
        #[arg(long, value_name = "N", default_value_t = 1)]
        threads: usize,
        /// The FracAtlas sample the whole-path inputs come from.
        #[arg(
            long,
            value_name = "DIR",
            default_value = "tests/data/fracatlas-sample/images"
        )]
        samples: PathBuf,
        /// Print the report as JSON (else Markdown tables).
        #[arg(long)]
        json: bool,
    },
    /// Serve only the fleet dashboard (the page connects to the broker from the browser).
    Dashboard {
        /// PORT (all interfaces) or ADDR:PORT.
        #[arg(long, value_name = "[ADDR:]PORT", default_value = "8080")]
        listen: String,
        /// The broker's MQTT-over-WebSockets URL, e.g. ws://broker:9001 (else the page asks,
        /// or takes ?broker=… from its address).
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        /// Topic prefix.
        #[arg(long, default_value = fv_core::wire::TOPIC_PREFIX)]
        prefix: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration (flags override it; FV_* variables override both).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Folder to watch.
    #[arg(long, value_name = "DIR")]
    watch: Option<PathBuf>,
    /// Broker, e.g. mqtt://localhost:1883 (none: local results only).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// State directory: outbox and the UID salt (default ./state).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(flatten)]
    read: ReadFlags,
    /// Seconds between heartbeats (default 30).
    #[arg(long, value_name = "S")]
    heartbeat: Option<u64>,
    /// A file is taken once unchanged for this many milliseconds (default 1000).
    #[arg(long, value_name = "MS")]
    settle_ms: Option<u64>,
    /// Also serve the fleet dashboard on PORT (all interfaces) or ADDR:PORT.
    #[arg(long, value_name = "[ADDR:]PORT")]
    dashboard: Option<String>,
    /// The broker's WebSockets URL that the dashboard page connects to.
    #[arg(long, value_name = "URL")]
    dashboard_broker: Option<String>,
    /// Accept images by DICOM C-STORE (and answer C-ECHO) on PORT or ADDR:PORT.
    #[arg(long, value_name = "[ADDR:]PORT")]
    dicom_listen: Option<String>,
    /// Our DICOM AE title (default FVEDGE): the called AE title the X-ray unit uses, and the
    /// calling one towards the PACS.
    #[arg(long, value_name = "TITLE")]
    dicom_ae: Option<String>,
    /// Send a DICOM Structured Report for every DICOM image read to this PACS.
    #[arg(long, value_name = "TITLE@HOST:PORT")]
    pacs: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    fv_runtime::init_logging(cli.verbose);
    match run(cli) {
        Ok(all_ok) => std::process::exit(if all_ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("fv-edge: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Writes one line; a closed pipe (`| head`) ends the run quietly, as ripgrep does.
fn emit(out: &mut impl std::io::Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Inspect { files, max_pixels } => {
            let options = DecodeOptions::with_max_pixels(max_pixels);
            let mut out = std::io::stdout().lock();
            let mut all_ok = true;
            for f in files {
                let line = fv_edge::inspect::inspect(&f, &options);
                all_ok &= line.ok;
                if !emit(&mut out, &serde_json::to_string(&line)?)? {
                    break;
                }
            }
            Ok(all_ok)
        }
        Command::Infer { files, read } => {
            // The same layers as `run` (flags, then `FV_*` over them), resolved once.
            let flags = read.layer();
            let layer = flags.merge(&Layer::from_env(|k| std::env::var(k).ok())?);
            let read = layer.read_settings(std::env::temp_dir().join("fv-edge-engine-cache"))?;
            fv_runtime::engine::set_threads(read.threads);
            let models = fv_runtime::models::load_dir(&read.models, &read.selection)?;
            let options = models.decode_options(&read.decode, read.reduced_decode);
            let mut pipeline = Pipeline {
                models,
                config: PipelineConfig {
                    site: read.site.clone(),
                    device: read.device_id.clone(),
                    // Without a configured salt, study hashes are unlinkable across runs.
                    uid_salt: layer
                        .uid_salt
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                    read: read.read,
                },
            };
            let mut out = std::io::stdout().lock();
            let mut all_ok = true;
            for f in files {
                let outcome = pipeline.process(file_source(&f), || {
                    fv_edge::sources::input::load_file(&f, &options)
                });
                all_ok &= outcome.message.error.is_none();
                if !emit(&mut out, &serde_json::to_string(&outcome.message)?)? {
                    break;
                }
            }
            Ok(all_ok)
        }
        Command::Run(a) => {
            let file = match &a.config {
                Some(p) => Layer::from_file(p)?,
                None => Layer::default(),
            };
            let flags = Layer {
                state: a.state,
                watch: a.watch,
                settle_ms: a.settle_ms,
                mqtt: MqttSettings {
                    url: a.mqtt,
                    heartbeat_s: a.heartbeat,
                    ..Default::default()
                },
                dashboard: fv_edge::dashboard::DashboardSettings {
                    listen: a.dashboard,
                    broker: a.dashboard_broker,
                    prefix: None,
                },
                dicom: fv_edge::config::DicomSettings {
                    listen: a.dicom_listen,
                    ae_title: a.dicom_ae,
                    pacs: fv_edge::config::PacsSettings {
                        address: a.pacs,
                        max_retry_s: None,
                        marks: None,
                    },
                    ..Default::default()
                },
                ..a.read.layer()
            };
            let env = Layer::from_env(|k| std::env::var(k).ok())?;
            fv_edge::daemon::run(file.merge(&flags).merge(&env).daemon_settings()?)?;
            Ok(true)
        }
        Command::Bench {
            models,
            iterations,
            warmup,
            engines,
            threads,
            samples,
            json,
        } => {
            let options = fv_edge::bench::BenchOptions {
                models,
                iterations: iterations.max(1),
                warmup,
                engines,
                threads: threads.max(1),
                samples,
            };
            let report = fv_edge::bench::run(&options, &mut |line| eprintln!("{line}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fv_edge::bench::markdown(&report));
            }
            Ok(true)
        }
        Command::Dashboard {
            listen,
            broker,
            prefix,
        } => {
            let server = fv_edge::dashboard::serve(&fv_edge::dashboard::DashboardSettings {
                listen: Some(listen),
                broker,
                prefix: Some(prefix),
            })?;
            // Printed so that a script (and the browser test) can find a port 0 listener.
            println!("dashboard on http://{}/", server.addr);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Ok(true)
        }
    }
}
