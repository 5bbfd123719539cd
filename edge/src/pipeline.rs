//! From an input to a result message: preprocess as the manifest says (the same fv-core code
//! the trainer used), classify, detect when configured, and read the outputs at the
//! thresholds chosen on validation.

use crate::input::{Input, InputError};
use crate::models::{Model, Models};
use fv_core::detection::{decode_yolov8, nms, NmsSettings};
use fv_core::preprocess::preprocess;
use fv_core::reading::{fusion_with, image_reading};
use fv_core::result::{
    Finding, Level, ResultBox, ResultMessage, Source, SourceKind, Study, Timing, RESULT_SCHEMA,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// When the detector runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DetectPolicy {
    /// On every image.
    Always,
    /// Only when the fracture probability is at or above the classifier's `suspicious`; on
    /// every image when the classifier is fused with the installed detector (the fused
    /// reading needs its score).
    #[default]
    Suspicious,
    /// Never.
    Never,
}

/// Who is reporting, and how.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Site name.
    pub site: String,
    /// Device id.
    pub device: String,
    /// Secret mixed into the StudyInstanceUID hash; never sent.
    pub uid_salt: String,
    /// When to detect.
    pub detect: DetectPolicy,
    /// Boxes scoring below this are not reported (also below the detector's `suspicious`).
    pub min_score: f32,
}

/// A processed input: the message and, when it decoded, the image for the overlay.
pub struct Outcome {
    /// The result message.
    pub message: ResultMessage,
    /// The decoded image.
    pub input: Option<Input>,
}

/// The models and the settings.
pub struct Pipeline {
    /// Loaded models.
    pub models: Models,
    /// Settings.
    pub config: PipelineConfig,
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e3 * 1000.0).round() / 1000.0
}

/// Hex SHA-256 of `salt:uid`.
pub fn uid_hash(salt: &str, uid: &str) -> String {
    Sha256::digest(format!("{salt}:{uid}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The copy of a result that leaves the device (MQTT). Input file names are chosen by people
/// and often carry a patient's name, ID or a DICOM UID, so a file's name becomes
/// `file-<12 hex of SHA-256(salt:name)>.<ext>`, in `source.name` and wherever the error
/// message quotes it. The local result beside the image keeps the real name for the person at
/// the unit; the same salt maps one name to one pseudonym, so a fleet operator can still tell
/// repeats apart and a technician at the unit can match them (`fv-edge` logs both at debug).
pub fn for_fleet(m: &ResultMessage, salt: &str) -> ResultMessage {
    let mut out = m.clone();
    // The acquisition time, to the hour: enough for a fleet's day and shift counts, too coarse
    // to pick an examination out of a clinic's list.
    out.captured_at = m.captured_at.as_deref().and_then(to_the_hour);
    if matches!(m.source.kind, SourceKind::File | SourceKind::Dicom) && !m.source.name.is_empty() {
        let name = &m.source.name;
        let pseudonym = fleet_name(name, salt);
        if let Some(e) = &mut out.error {
            e.message = e.message.replace(name.as_str(), &pseudonym);
        }
        tracing::debug!("fleet name of {name}: {pseudonym}");
        out.source.name = pseudonym;
    }
    out
}

/// The pseudonym the fleet sees for a file name: `file-<12 hex of a salted hash>.<ext>`.
pub fn fleet_name(name: &str, salt: &str) -> String {
    let ext = std::path::Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{}", e.to_ascii_lowercase()))
        .unwrap_or_default();
    format!(
        "file-{}{ext}",
        &uid_hash(salt, &format!("name:{name}"))[..12]
    )
}

/// `2026-12-02T09:41:17.123Z` → `2026-12-02T09:00:00Z`; `None` for what is not RFC 3339.
pub fn to_the_hour(t: &str) -> Option<String> {
    let parsed = humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()?;
    let secs = parsed.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let hour = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs - secs % 3600);
    Some(humantime::format_rfc3339_seconds(hour).to_string())
}

/// The current time, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Pipeline {
    fn message(&self, source: Source) -> ResultMessage {
        let mut models = vec![self.models.classifier.reference()];
        models.extend(self.models.detector.as_ref().map(Model::reference));
        ResultMessage {
            schema: RESULT_SCHEMA.into(),
            id: uuid::Uuid::now_v7().to_string(),
            site: self.config.site.clone(),
            device: self.config.device.clone(),
            source,
            study: None,
            captured_at: None,
            processed_at: String::new(),
            fracture_probability: None,
            finding: None,
            boxes: Vec::new(),
            models,
            timing_ms: Timing::default(),
            error: None,
        }
    }

    /// A result for an input that failed before or during decoding.
    pub fn failed(&self, source: Source, error: &InputError) -> ResultMessage {
        let mut m = self.message(source);
        m.processed_at = now_rfc3339();
        m.error = Some(error.info());
        m
    }

    /// Loads with `load` and processes; `source` names the input if loading fails.
    pub fn process(
        &mut self,
        source: Source,
        load: impl FnOnce() -> Result<Input, InputError>,
    ) -> Outcome {
        let start = Instant::now();
        let input = match load() {
            Ok(i) => i,
            Err(e) => {
                let mut m = self.failed(source, &e);
                m.timing_ms.total = ms(start);
                return Outcome {
                    message: m,
                    input: None,
                };
            }
        };
        let decode = ms(start);
        let mut m = self.message(Source {
            kind: input.kind,
            name: input.name.clone(),
        });
        m.study = input.study_uid.as_ref().map(|uid| Study {
            uid_hash: uid_hash(&self.config.uid_salt, uid),
        });
        m.captured_at = input.captured_at.clone();
        match self.read(&input, &mut m) {
            Ok(t) => {
                m.timing_ms = Timing {
                    decode,
                    total: ms(start),
                    ..t
                };
            }
            Err(e) => {
                m.error = Some(fv_core::result::ErrorInfo {
                    code: "inference".into(),
                    message: format!("{}: inference failed: {e:#}", input.name),
                });
                m.timing_ms.decode = decode;
                m.timing_ms.total = ms(start);
            }
        }
        m.processed_at = now_rfc3339();
        Outcome {
            message: m,
            input: Some(input),
        }
    }

    fn read(&mut self, input: &Input, m: &mut ResultMessage) -> anyhow::Result<Timing> {
        let mut timing = Timing::default();
        let c = &mut self.models.classifier;
        let t = Instant::now();
        let pre = preprocess(&input.image, &c.manifest.input);
        timing.preprocess = ms(t);
        let t = Instant::now();
        let out = c.engine.run(&pre.tensor)?;
        timing.classify = ms(t);
        let cls_out = out.into_iter().next().unwrap_or_default();
        let c = &self.models.classifier;
        // A fused reading needs the detector's score on every image.
        let fused = fusion_with(
            &c.manifest,
            self.models.detector.as_ref().map(|d| &d.manifest),
        )
        .is_some();
        let alone = image_reading(&c.manifest, &cls_out, None)?;
        // `never` is the operator's word (the detector costs time): the classifier is then
        // read alone, fused or not.
        let run_detector = match self.config.detect {
            DetectPolicy::Always => true,
            DetectPolicy::Suspicious => fused || alone.probability >= alone.thresholds.suspicious,
            DetectPolicy::Never => false,
        };
        let mut det_out = None;
        if let (true, Some(d)) = (run_detector, self.models.detector.as_mut()) {
            let t = Instant::now();
            let pre = preprocess(&input.image, &d.manifest.input);
            let out = d.engine.run(&pre.tensor)?;
            let raw = out.into_iter().next().unwrap_or_default();
            let classes = d.manifest.labels.len().max(1);
            let anchors = raw.len() / (4 + classes);
            let dt = d.manifest.thresholds;
            let floor = (dt.suspicious.get() as f32).max(self.config.min_score);
            let dets = decode_yolov8(&raw, classes, anchors, floor)?;
            // The suppression the trainer evaluated with, from the manifest.
            let settings = d.manifest.nms.unwrap_or(NmsSettings::EDGE);
            let kept = nms(dets, &settings.with_floor(floor));
            m.boxes = kept
                .iter()
                .map(|k| {
                    let b = pre.geometry.to_original(&k.bbox);
                    ResultBox {
                        x1: b.x1,
                        y1: b.y1,
                        x2: b.x2,
                        y2: b.y2,
                        score: k.score,
                        level: if k.score >= dt.definite {
                            Level::Definite
                        } else {
                            Level::Suspicious
                        },
                    }
                })
                .collect();
            timing.detect = Some(ms(t));
            det_out = Some(raw);
        }
        let reading = match (&det_out, &self.models.detector) {
            (Some(raw), Some(d)) => image_reading(
                &self.models.classifier.manifest,
                &cls_out,
                Some((&d.manifest, raw)),
            )?,
            _ => alone,
        };
        m.fracture_probability = Some(reading.probability);
        m.finding = Some(Finding::at(
            reading.probability,
            reading.thresholds.suspicious,
            reading.thresholds.definite,
        ));
        Ok(timing)
    }
}

/// The source record for a file path.
pub fn file_source(path: &std::path::Path) -> Source {
    let dicom = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
    Source {
        kind: if dicom {
            SourceKind::Dicom
        } else {
            SourceKind::File
        },
        name: crate::input::file_name(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fv_core::result::ErrorInfo;
    use fv_core::Probability;

    fn manifest(name: &str) -> fv_core::manifest::Manifest {
        let path = format!("{}/../models/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_classifier_probability_is_calibrated_as_its_manifest_says() {
        let mut m = manifest("efficientnet-lite0-fracatlas");
        // The committed classifier outputs probabilities: 0.75 for a fracture here.
        let out = [0.25f32, 0.75];
        m.probability_calibration = None;
        let raw = image_reading(&m, &out, None).unwrap().probability.get();
        let c = fv_core::calibration::Calibration::Platt { a: 0.5, b: -1.0 };
        m.probability_calibration = Some(c);
        let calibrated = image_reading(&m, &out, None).unwrap().probability;
        assert!((raw - 0.75).abs() < 1e-6);
        assert_eq!(calibrated, c.apply(Probability::saturating(raw)));
        assert!(calibrated.get() < raw);
    }

    #[test]
    fn the_fusion_applies_only_with_its_own_detector() {
        let mut m = manifest("efficientnet-lite0-fracatlas");
        let mut d = manifest("yolov8-effl0-fracatlas");
        let fusion = fv_core::reading::Fusion {
            detector_sha256: d.onnx_sha256.clone(),
            detector: d.name.clone(),
            classifier_weight: 1.0,
            detector_weight: 1.0,
            bias: 0.0,
            thresholds: fv_core::manifest::Thresholds {
                suspicious: Probability::new(0.1).unwrap(),
                definite: Probability::new(0.9).unwrap(),
            },
            metrics: None,
        };
        m.fusion = Some(fusion.clone());
        let cls = [0.5f32, 0.5];
        // One anchor, one class: the top score is 0.9, so the fused logit is logit(0.9).
        let det = [0.0f32, 0.0, 1.0, 1.0, 0.9];
        let r = image_reading(&m, &cls, Some((&d, &det))).unwrap();
        assert_eq!(r.source, fv_core::reading::ReadingSource::Fusion);
        assert!(
            (r.probability.get() - 0.9).abs() < 1e-6,
            "{}",
            r.probability
        );
        assert_eq!(r.thresholds, fusion.thresholds);
        // Another detector: the classifier alone, on its own thresholds.
        d.onnx_sha256 = "0".repeat(64);
        let r = image_reading(&m, &cls, Some((&d, &det))).unwrap();
        assert_eq!(r.source, fv_core::reading::ReadingSource::Classifier);
        assert_eq!(r.thresholds, m.thresholds);
    }

    #[test]
    fn the_fleet_gets_the_acquisition_hour_only() {
        assert_eq!(
            to_the_hour("2026-12-02T09:41:17.123Z").as_deref(),
            Some("2026-12-02T09:00:00Z")
        );
        assert_eq!(
            to_the_hour("2026-12-02T23:59:59Z").as_deref(),
            Some("2026-12-02T23:00:00Z")
        );
        assert_eq!(to_the_hour("yesterday"), None);
    }

    #[test]
    fn fleet_copy_hides_file_names() {
        let name = "DOE_JOHN_PID-777.dcm";
        let m: ResultMessage = serde_json::from_value(serde_json::json!({
            "schema": RESULT_SCHEMA, "id": "x", "site": "s", "device": "d",
            "source": {"kind": "dicom", "name": name}, "study": null, "captured_at": null,
            "processed_at": "2026-11-29T00:00:00Z", "models": [],
            "timing_ms": {"decode": 0.0, "preprocess": 0.0, "classify": 0.0, "detect": null, "total": 0.0},
        }))
        .unwrap();
        let mut failed = m.clone();
        failed.error = Some(ErrorInfo {
            code: "truncated".into(),
            message: format!("{name}: the file ends early"),
        });
        let a = for_fleet(&failed, "salt-1");
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("DOE") && !text.contains("777"), "{text}");
        assert!(a.source.name.starts_with("file-") && a.source.name.ends_with(".dcm"));
        assert_eq!(
            a.error.unwrap().message,
            format!("{}: the file ends early", a.source.name)
        );
        // One name, one pseudonym per salt; another salt, another pseudonym.
        assert_eq!(for_fleet(&m, "salt-1").source.name, a.source.name);
        assert_ne!(for_fleet(&m, "salt-2").source.name, a.source.name);
        // The local copy is untouched.
        assert_eq!(m.source.name, name);
    }
}
