//! The result message: what fv-edge publishes over MQTT and writes beside each done file,
//! one per input image (`fractuvision.result/1`). Consumers de-duplicate by `id`.
//!
//! It carries no patient identifier: a DICOM study is named only by a salted hash of its
//! StudyInstanceUID, and a source only by its file name without directories.

use crate::manifest::Precision;
use crate::Probability;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The value of [`ResultMessage::schema`].
pub const RESULT_SCHEMA: &str = "fractuvision.result/1";

/// Where an image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A JPEG, PNG or TIFF file.
    File,
    /// A DICOM Part 10 file.
    Dicom,
    /// A V4L2 frame grabber.
    V4l,
}

/// The input, named without directories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Kind of source.
    pub kind: SourceKind,
    /// File name (no directories) or device and frame number.
    pub name: String,
}

/// The study, pseudonymized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Study {
    /// Hex SHA-256 of the site salt and the StudyInstanceUID: stable per device salt, not
    /// reversible without it.
    pub uid_hash: String,
}

/// The reading of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// At or above the model's `definite` threshold.
    Fracture,
    /// At or above `suspicious`, below `definite`: worth a second look.
    Suspicious,
    /// Below `suspicious`.
    NoFracture,
    /// Not read: the image is outside the models' scope (not a musculoskeletal radiograph of
    /// the kind they learned; [`crate::scope`]). No probability is given.
    NotApplicable,
}

/// How sure a box is, by the detector's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// At or above the detector's `suspicious` threshold.
    Suspicious,
    /// At or above its `definite` threshold.
    Definite,
    /// Below `suspicious`: a lower-confidence region, reported when asked for (a lower
    /// `--min-score`) or as the one place to look when the image reads positive and no box
    /// passed (`localization: candidate`). Not a finding of its own.
    Candidate,
}

/// Where to look, for an image that reads `fracture` or `suspicious`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Localization {
    /// At least one box passed the detector's `suspicious` threshold.
    Boxes,
    /// None did: the detector's best region is given as one `candidate` box, a place to look
    /// first, at lower confidence.
    Candidate,
    /// The detector ran and saw no region worth showing: look at the whole image.
    NotFound,
    /// No detector ran (none installed, or `detect = never`).
    NotRun,
}

/// A fracture box in the displayed image's pixels (after EXIF orientation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
    /// Detector confidence.
    pub score: Probability,
    /// Level by the detector's thresholds.
    pub level: Level,
}

/// A model that produced the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// SHA-256 of the ONNX file.
    pub sha256: String,
    /// Precision of the graph.
    pub precision: Precision,
    /// The engine that ran it (`tract`, `onnxruntime-cpu`, `onnxruntime-tensorrt`, ...);
    /// absent in results made before fv-edge chose its engine itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// Milliseconds spent per stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Reading and decoding the image.
    pub decode: f64,
    /// Resizing and normalizing.
    pub preprocess: f64,
    /// The classifier.
    pub classify: f64,
    /// The detector, when it ran.
    pub detect: Option<f64>,
    /// Everything.
    pub total: f64,
}

/// Why an input produced no reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorInfo {
    /// Stable machine-readable code, e.g. `truncated`, `unsupported_modality`.
    pub code: String,
    /// What happened, naming the file, and what to do.
    pub message: String,
}

/// One result message (`fractuvision.result/1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultMessage {
    /// Always [`RESULT_SCHEMA`].
    pub schema: String,
    /// UUIDv7: unique, time-ordered; the de-duplication key.
    pub id: String,
    /// Site name.
    pub site: String,
    /// Device id.
    pub device: String,
    /// The input.
    pub source: Source,
    /// The study, for DICOM inputs.
    pub study: Option<Study>,
    /// When the image was acquired (DICOM acquisition time, else the file's modification
    /// time or the frame's capture time), RFC 3339.
    pub captured_at: Option<String>,
    /// When the result was made, RFC 3339 UTC.
    pub processed_at: String,
    /// The classifier's probability of a fracture; absent when the input failed or is
    /// `not_applicable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fracture_probability: Option<Probability>,
    /// The reading at the classifier's thresholds; absent when the input failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
    /// Fracture boxes (empty when the detector did not run or found none).
    #[serde(default)]
    pub boxes: Vec<ResultBox>,
    /// Where to look, when the finding is `fracture` or `suspicious`: said explicitly, so
    /// that a positive reading without a box is never silent about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localization: Option<Localization>,
    /// The scope check, when the classifier has one: the image's distance from the training
    /// images and the threshold above which it is `not_applicable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::scope::ScopeReading>,
    /// The models used.
    pub models: Vec<ModelRef>,
    /// Time per stage.
    pub timing_ms: Timing,
    /// Present when the input failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl Finding {
    /// The finding for probability `p` at thresholds `suspicious` ≤ `definite`.
    pub fn at(p: Probability, suspicious: Probability, definite: Probability) -> Self {
        if p >= definite {
            Finding::Fracture
        } else if p >= suspicious {
            Finding::Suspicious
        } else {
            Finding::NoFracture
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_at_thresholds() {
        let p = |v| Probability::new(v).unwrap();
        assert_eq!(Finding::at(p(0.7), p(0.2), p(0.7)), Finding::Fracture);
        assert_eq!(Finding::at(p(0.2), p(0.2), p(0.7)), Finding::Suspicious);
        assert_eq!(Finding::at(p(0.19), p(0.2), p(0.7)), Finding::NoFracture);
        assert_eq!(
            serde_json::to_string(&Finding::NoFracture).unwrap(),
            "\"no_fracture\""
        );
    }
}
