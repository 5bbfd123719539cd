//! The binaries' log setup, one for fv-edge and fv-train: lines on stderr (stdout carries
//! results), `-v` / `-vv` for more, `RUST_LOG` over both.

/// Installs the global subscriber: `warn` by default, `info` at `-v`, `debug` at `-vv`,
/// unless `RUST_LOG` says otherwise.
pub fn init_logging(verbose: u8) {
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
