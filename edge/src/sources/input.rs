//! One input image, from whatever source: decoded to grayscale in display orientation, with
//! what the result message may say about it (never a patient identifier).

use crate::sources::dicom;
use crate::sources::input_error::InputError;
use fv_core::imaging::{decode_bytes, read_bounded, DecodeOptions, XrayImage};
use fv_core::result::SourceKind;
use std::path::Path;

/// A decoded input ready for the pipeline.
#[derive(Clone, Debug)]
pub struct Input {
    /// The pixels, display orientation.
    pub image: XrayImage,
    /// Kind of source.
    pub kind: SourceKind,
    /// File name without directories, or the device and frame.
    pub name: String,
    /// The StudyInstanceUID (DICOM only). Stays on the device: only its salted hash is sent.
    pub study_uid: Option<String>,
    /// Acquisition time as RFC 3339, when known.
    pub captured_at: Option<String>,
}

/// The file name without directories, as results carry it.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn modified_rfc3339(path: &Path) -> Option<String> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(humantime::format_rfc3339_millis(t).to_string())
}

/// Whether `bytes` start like a DICOM Part 10 file (`DICM` after the 128-byte preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM")
}

/// Reads and decodes one file: DICOM Part 10, PNG, TIFF or JPEG.
///
/// A panic inside a decoder (a library's assertion on a malformed file) becomes this input's
/// error, so that one bad file cannot stop the daemon, or, restarted, stop it again.
pub fn load_file(path: &Path, options: &DecodeOptions) -> Result<Input, InputError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_file_inner(path, options)
    }))
    .unwrap_or_else(|panic| {
        let what = panic_message(panic.as_ref());
        tracing::error!("{}: a decoder panicked: {what}", path.display());
        Err(InputError {
            code: "corrupt",
            message: format!(
                "{}: malformed file (the decoder failed: {what}); send it again",
                path.display()
            ),
        })
    })
}

fn load_file_inner(path: &Path, options: &DecodeOptions) -> Result<Input, InputError> {
    // Bounded before it is read, and never through a link: a sparse 3 GB file with `DICM`
    // at byte 128 was read whole, the daemon was killed for memory, and systemd's restart
    // took the same file first again.
    let bytes = read_bounded(path, options.max_file_bytes, false).map_err(|e| InputError {
        code: e.code(),
        message: e.to_string(),
    })?;
    let captured_at = modified_rfc3339(path);
    if is_dicom(&bytes) {
        let d = dicom::from_bytes(&bytes, path, options)?;
        return Ok(Input {
            image: d.image,
            kind: SourceKind::Dicom,
            name: file_name(path),
            study_uid: d.study_uid,
            captured_at,
        });
    }
    let decoded = decode_bytes(&bytes, path, options).map_err(|e| InputError {
        code: e.code(),
        message: e.to_string(),
    })?;
    Ok(Input {
        image: decoded.image,
        kind: SourceKind::File,
        name: file_name(path),
        study_uid: None,
        captured_at,
    })
}

/// What a caught panic said (its `&str` or `String` payload), for a log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}
