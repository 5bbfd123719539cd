//! fv-edge's TOML configuration: parse, then merge over defaults as `run` does.
#![no_main]

use fv_edge::config::Layer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(layer) = toml::from_str::<Layer>(text) {
            let merged = Layer::default().merge(&layer);
            // What parses must serialise again (the config is echoed in logs and tests).
            let _ = toml::to_string(&merged);
            if let Some(l) = &merged.dashboard.listen {
                let _ = fv_edge::dashboard::listen_addr(l);
            }
        }
    }
});
