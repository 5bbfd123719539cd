//! Model manifests (`models/*.json`): parsing and validation refuse bad ones with an error.
#![no_main]

use fv_core::manifest::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::from_json(text, Path::new("fuzz-input.json"));
    }
});
