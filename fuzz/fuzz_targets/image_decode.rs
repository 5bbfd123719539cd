//! JPEG, PNG and TIFF decoding from untrusted bytes, as the watch folder receives them: any
//! input must give an image or a `DecodeError`, never a panic, a hang or a huge allocation.
#![no_main]

use fv_core::imaging::{decode_bytes, DecodeOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // A small pixel limit keeps each run fast; the limit itself is what is being tested
    // (a header claiming 30000×30000 must be refused before allocating).
    let options = DecodeOptions::with_max_pixels(1 << 22);
    if let Ok(d) = decode_bytes(data, Path::new("fuzz-input"), &options) {
        assert!(u64::from(d.image.width()) * u64::from(d.image.height()) <= options.max_pixels);
        let _ = d.image.to_gray8();
    }
});
