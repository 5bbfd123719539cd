//! Why an input cannot be used, as every source (files, DICOM, V4L2) reports it: its own
//! module so that the DICOM reader and the input dispatcher do not import each other.

use fv_core::result::ErrorInfo;

/// Why an input cannot be used: a stable code and a message naming the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// Machine-readable code.
    pub code: &'static str,
    /// For people: names the file, the reason and what to do.
    pub message: String,
}

impl InputError {
    /// The error as a result message carries it.
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code.into(),
            // Bounded: every result must fit one MQTT packet, whatever an input quoted.
            message: bounded(&self.message, 1000).into_owned(),
        }
    }
}

/// `s` cut to at most `max` characters, saying how much was cut: for error messages that
/// quote what an input holds (a 12 000-character Modality once made a result too large to
/// publish, and stopped delivery).
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((cut, _)) => format!("{}… ({} characters)", &s[..cut], s.chars().count()).into(),
    }
}
