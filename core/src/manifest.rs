//! The model manifest: the JSON file beside every exported ONNX model that tells a runtime
//! everything it needs, so that nothing is guessed at the edge.

use crate::preprocess::InputSpec;
use crate::Probability;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest format version this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// What a model does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One probability per image (fractured / not fractured).
    Classify,
    /// Boxes around fractures.
    Detect,
}

/// Numeric precision of the exported graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    Fp32,
    /// 16-bit float weights and compute, fp32 input and output.
    Fp16,
    /// QDQ int8, calibrated.
    Int8,
}

impl std::fmt::Display for Precision {
    /// The manifest's spelling: `fp32`, `fp16`, `int8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        })
    }
}

/// A word that names none of an enum's values (`--precision int4`, a run's `task` file).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`: use {choices}")]
pub struct UnknownValue {
    /// What was being read (`precision`, `task`).
    pub kind: &'static str,
    /// What was given.
    pub value: String,
    /// The words that would do.
    pub choices: &'static str,
}

impl std::str::FromStr for Precision {
    type Err = UnknownValue;

    /// The manifest's spelling, as [`Precision`]'s `Display` writes it; the one parser for
    /// command lines, environment variables and config files.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            _ => Err(UnknownValue {
                kind: "precision",
                value: s.to_owned(),
                choices: "fp32, fp16 or int8",
            }),
        }
    }
}

impl std::fmt::Display for Task {
    /// The manifest's spelling: `classify`, `detect`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Classify => "classify",
            Task::Detect => "detect",
        })
    }
}

impl std::str::FromStr for Task {
    type Err = UnknownValue;

    /// The manifest's spelling, as `Display` writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classify" => Ok(Task::Classify),
            "detect" => Ok(Task::Detect),
            _ => Err(UnknownValue {
                kind: "task",
                value: s.to_owned(),
                choices: "classify or detect",
            }),
        }
    }
}

/// One output of the graph and how to read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Shape, with `-1` for a dynamic batch.
    pub shape: Vec<i64>,
    /// How to read it.
    pub meaning: OutputMeaning,
}

/// How an output is read. The edge reads by this, never by the tensor's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputMeaning {
    /// One probability per label (a softmax already applied).
    Probabilities,
    /// One logit per label (the reader applies the softmax).
    Logits,
    /// YOLOv8's `[batch, 4 + classes, anchors]`: cx, cy, w, h in letterboxed input pixels,
    /// then one sigmoid score per label.
    // Detector manifests written before this enum spelled it out in prose.
    #[serde(
        alias = "yolov8: cx, cy, w, h in letterboxed input pixels, then one sigmoid score per label"
    )]
    Yolov8,
    /// The image's distance from the training images, one value, read against
    /// `applicability.threshold` ([`crate::scope`]).
    #[serde(rename = "scope_distance")]
    ScopeDistance,
}

/// The two operating thresholds chosen on the validation split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Thresholds {
    /// At or above: flag the image for a second look (the high-sensitivity point).
    pub suspicious: Probability,
    /// At or above: report a fracture (the high-specificity point).
    pub definite: Probability,
}

impl Thresholds {
    /// Both thresholds moved to the prevalence the probability is corrected to, when there
    /// is a correction: an image passes each as it passed before.
    pub fn at(self, prevalence: Option<crate::calibration::Prevalence>) -> Thresholds {
        match prevalence {
            Some(p) => Thresholds {
                suspicious: p.threshold(self.suspicious),
                definite: p.threshold(self.definite),
            },
            None => self,
        }
    }

    /// `suspicious` must not be above `definite`; `what` names the pair in the error.
    fn check_order(&self, what: &str) -> Result<(), String> {
        if self.suspicious > self.definite {
            return Err(format!(
                "{what} `suspicious` ({}) is above `definite` ({})",
                self.suspicious, self.definite
            ));
        }
        Ok(())
    }
}

/// Test-split metrics, with what they were measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TestMetrics {
    /// Which split, e.g. `test`.
    pub split: String,
    /// Images per class, by label.
    pub n_per_class: BTreeMap<String, usize>,
    /// Metric name to value (e.g. `roc_auc`, `sensitivity@suspicious`, `map50`).
    pub values: BTreeMap<String, f64>,
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainingRecord {
    /// Dataset name and version.
    pub data: String,
    /// Split description.
    pub split: String,
    /// Git commit of the code that trained it.
    pub git_commit: String,
    /// The exact command.
    pub command: String,
}

/// How a reduced-precision graph compares with the fp32 graph it was made from, measured on
/// the validation split with the same runtime (tract).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// The precision it was converted from (fp32).
    pub reference: Precision,
    /// What was done, e.g. `QDQ: int8 per-channel weights, uint8 per-tensor activations`.
    pub method: String,
    /// Activation calibration (`minmax`, `percentile-99.99`), int8 only.
    pub calibration: Option<String>,
    /// Training images used to calibrate, int8 only.
    pub calibration_images: Option<usize>,
    /// Validation images compared.
    pub valid_images: usize,
    /// Validation ROC-AUC of the reference graph (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_roc_auc_reference: Option<f64>,
    /// Validation ROC-AUC of this graph (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_roc_auc: Option<f64>,
    /// `valid_roc_auc − valid_roc_auc_reference` (negative: a drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_roc_auc_change: Option<f64>,
    /// Validation mAP50 of the reference graph (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_map50_reference: Option<f64>,
    /// Validation mAP50 of this graph (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_map50: Option<f64>,
    /// Validation mAP50-95 of the reference graph (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_map50_95_reference: Option<f64>,
    /// Validation mAP50-95 of this graph (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_map50_95: Option<f64>,
    /// Largest |p − p_reference| over the validation images (detectors: every anchor's box
    /// score).
    pub valid_max_abs_probability_diff: f64,
    /// Median |p − p_reference| over the validation images.
    pub valid_median_abs_probability_diff: f64,
    /// Mean |p − p_reference| over the validation images (the bound int8 is shipped under:
    /// 0.03); absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_mean_abs_probability_diff: Option<f64>,
    /// `true` when the thresholds and test metrics are the reference graph's, because the
    /// converted graph was compared on a subset of validation only (fp16 runs ~270× slower
    /// than fp32 in tract on x86); `false` when they were measured on this graph.
    pub metrics_from_reference: bool,
}

/// A model manifest (`<name>.json` beside `<name>.onnx`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_VERSION`]).
    pub manifest_version: u32,
    /// Model name, e.g. `efficientnet-lite0-fracatlas`.
    pub name: String,
    /// Model version, e.g. `2026.11.1`.
    pub version: String,
    /// What it does.
    pub task: Task,
    /// Input tensor and preprocessing.
    pub input: InputSpec,
    /// Output tensors.
    pub outputs: Vec<OutputSpec>,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Operating thresholds, on the calibrated probability when `probability_calibration` is set.
    pub thresholds: Thresholds,
    /// How the raw probability of the fracture class is calibrated (classifiers; fitted on
    /// validation). Absent: the raw probability is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability_calibration: Option<crate::calibration::Calibration>,
    /// The fusion of this classifier with one detector, and the thresholds on the fused
    /// probability (classifiers; fitted on validation by `fv-train fuse`). Applies only with
    /// that detector installed ([`crate::reading::image_reading`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::reading::Fusion>,
    /// The prevalence the calibration, fusion and thresholds were fitted at, and the one
    /// the reported probability is corrected to (classifiers; written by `fv-train fuse
    /// --write`; a unit may set its own deployment prevalence). Absent: the probability is
    /// reported at the prevalence it was fitted at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prevalence: Option<crate::calibration::Prevalence>,
    /// Horizontal-flip test-time augmentation (classifiers; chosen on validation by `fv-train
    /// fuse`): the raw probability is the mean of the raw probabilities on the image and on
    /// its mirror, and the calibration, thresholds and fusion above are fitted to that mean.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_time_hflip: bool,
    /// Which images the classifier reads at all: those its scope check finds near its
    /// training images (classifiers; fitted by `fv-train scope`). Absent: every image is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applicability: Option<crate::scope::Applicability>,
    /// How the reading behaved on validation, per class, for the fleet's drift watch
    /// (classifiers; written by `fv-train fuse --write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<crate::drift::Expected>,
    /// How boxes are suppressed (detectors). Absent: [`crate::detection::NmsSettings::EDGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms: Option<crate::detection::NmsSettings>,
    /// Precision of the graph.
    pub precision: Precision,
    /// Test metrics.
    pub metrics: Option<TestMetrics>,
    /// Provenance.
    pub training: Option<TrainingRecord>,
    /// For fp16 and int8: the measured change from fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Conversion>,
    /// SHA-256 of the ONNX file, lowercase hex.
    pub onnx_sha256: String,
}

/// A manifest that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: cannot read the model manifest: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid manifest JSON.
    #[error(
        "{path}: invalid model manifest: {source}; re-export the model with `fv-train export`"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A version this build does not read.
    #[error("{path}: manifest version {found} is not supported (this build reads version {MANIFEST_VERSION}); upgrade fv-edge or re-export the model")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Values that cannot work together.
    #[error("{path}: inconsistent model manifest: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn from_path(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and checks manifest JSON; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            manifest_version: u32,
        }
        // Check the version first so that a newer manifest says "upgrade", not "unknown field".
        let v: VersionOnly = serde_json::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if v.manifest_version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                path: path.to_owned(),
                found: v.manifest_version,
            });
        }
        let m: Manifest = serde_json::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })?;
        m.validate().map_err(|reason| ManifestError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        self.input.validate()?;
        if self.labels.is_empty() {
            return Err("`labels` is empty".into());
        }
        if self.outputs.is_empty() {
            return Err("`outputs` is empty".into());
        }
        let meaning = self.outputs[0].meaning;
        let fits = match self.task {
            Task::Classify => meaning != OutputMeaning::Yolov8,
            Task::Detect => meaning == OutputMeaning::Yolov8,
        };
        if !fits {
            return Err(format!(
                "a {:?} model's first output cannot be read as {meaning:?}",
                self.task
            ));
        }
        self.thresholds.check_order("threshold")?;
        if !is_sha256(&self.onnx_sha256) {
            return Err("`onnx_sha256` is not 64 hex digits".into());
        }
        if self.test_time_hflip && self.task != Task::Classify {
            return Err("`test_time_hflip` belongs in a classifier's manifest".into());
        }
        if let Some(a) = &self.applicability {
            if self.task != Task::Classify {
                return Err("`applicability` belongs in a classifier's manifest".into());
            }
            a.validate(&self.outputs)?;
        }
        if let Some(f) = &self.fusion {
            if self.task != Task::Classify {
                return Err("`fusion` belongs in a classifier's manifest".into());
            }
            if !is_sha256(&f.detector_sha256) {
                return Err("`fusion.detector_sha256` is not 64 hex digits".into());
            }
            f.thresholds.check_order("fusion threshold")?;
            if ![f.classifier_weight, f.detector_weight, f.bias]
                .iter()
                .all(|w| w.is_finite())
            {
                return Err("`fusion` has a weight that is not a finite number".into());
            }
        }
        Ok(())
    }
}

/// Lowercase hex SHA-256 of a model file's bytes: what `onnx_sha256` (and a fusion's
/// `detector_sha256`) record, and what a runtime checks before it loads the file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::ResizeMode;

    #[test]
    fn an_output_meaning_that_does_not_fit_the_task_is_refused() {
        let mut m = sample();
        m.outputs[0].meaning = OutputMeaning::Yolov8;
        let text = serde_json::to_string(&m).unwrap();
        let e = Manifest::from_json(&text, Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Yolov8"), "{e}");
        // The prose older detector manifests carry still reads as yolov8.
        let old: OutputMeaning = serde_json::from_str(
            "\"yolov8: cx, cy, w, h in letterboxed input pixels, then one sigmoid score per label\"",
        )
        .unwrap();
        assert_eq!(old, OutputMeaning::Yolov8);
        assert!(serde_json::from_str::<OutputMeaning>("\"heatmap\"").is_err());
    }

    #[test]
    fn precision_reads_what_it_writes_and_names_the_choices_otherwise() {
        for p in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""), "the manifest's spelling");
        }
        assert_eq!("INT8".parse::<Precision>(), Ok(Precision::Int8));
        let e = "int4".parse::<Precision>().unwrap_err().to_string();
        assert!(
            e.contains("int4") && e.contains("fp32, fp16 or int8"),
            "{e}"
        );
    }

    fn sample() -> Manifest {
        Manifest {
            manifest_version: MANIFEST_VERSION,
            name: "tiny".into(),
            version: "0.0.1".into(),
            task: Task::Classify,
            input: InputSpec::imagenet(224, 224, ResizeMode::Stretch),
            outputs: vec![OutputSpec {
                name: "probabilities".into(),
                shape: vec![-1, 2],
                meaning: OutputMeaning::Probabilities,
            }],
            labels: crate::reading::CLASSIFIER_LABELS.map(String::from).to_vec(),
            thresholds: Thresholds {
                suspicious: Probability::new(0.2).unwrap(),
                definite: Probability::new(0.7).unwrap(),
            },
            probability_calibration: None,
            prevalence: None,
            fusion: None,
            test_time_hflip: false,
            nms: None,
            applicability: None,
            expected: None,
            precision: Precision::Fp32,
            metrics: None,
            training: None,
            conversion: None,
            onnx_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let m = sample();
        let json = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(Manifest::from_json(&json, Path::new("m.json")).unwrap(), m);

        let newer = json.replace("\"manifest_version\": 1", "\"manifest_version\": 9");
        let err = Manifest::from_json(&newer, Path::new("m.json")).unwrap_err();
        assert!(
            matches!(err, ManifestError::Version { found: 9, .. }),
            "{err}"
        );

        let mut bad = m.clone();
        bad.thresholds.suspicious = Probability::new(0.9).unwrap();
        let json = serde_json::to_string(&bad).unwrap();
        let err = Manifest::from_json(&json, Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("m.json: inconsistent"), "{err}");
    }
}
