//! DICOM Part 10 parsing and pixel decoding (dicom-rs through fv-edge's reader): an error with
//! a code, never a panic.
#![no_main]

use fv_core::imaging::DecodeOptions;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let options = DecodeOptions::with_max_pixels(1 << 22);
    let _ = fv_edge::dicom::from_bytes(data, Path::new("fuzz-input.dcm"), &options);
});
