//! `fv-edge inspect`: decode inputs exactly as the pipeline will, and say for each whether
//! it is usable, one JSON line per input.

use fv_core::imaging::{decode_file, DecodeOptions};
use serde::Serialize;
use std::path::Path;

/// What is wrong with an input: a stable code and a message naming the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InputError {
    /// Machine-readable code (`truncated`, `too_large`, `unsupported_format`, ...).
    pub code: String,
    /// For people: names the file, the reason and what to do.
    pub message: String,
}

/// One line of `fv-edge inspect` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InspectLine {
    /// The input as given.
    pub input: String,
    /// Whether it decoded.
    pub ok: bool,
    /// Container format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<fv_core::imaging::SourceFormat>,
    /// `[width, height]` as displayed, after EXIF orientation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// Bits per sample carrying signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u8>,
    /// EXIF orientation (1 = none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exif_orientation: Option<u8>,
    /// Why it is not usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<InputError>,
}

/// Decodes `path` and describes the result.
pub fn inspect(path: &Path, options: &DecodeOptions) -> InspectLine {
    let input = path.display().to_string();
    match decode_file(path, options) {
        Ok(d) => InspectLine {
            input,
            ok: true,
            format: Some(d.header.format),
            size: Some([d.image.width(), d.image.height()]),
            bits: Some(d.image.significant_bits()),
            exif_orientation: Some(d.header.exif_orientation),
            error: None,
        },
        Err(e) => InspectLine {
            input,
            ok: false,
            format: None,
            size: None,
            bits: None,
            exif_orientation: None,
            error: Some(InputError {
                code: e.code().to_owned(),
                message: e.to_string(),
            }),
        },
    }
}
