//! From an input to a result message: the image is read by fv-runtime ([`Models::read`]:
//! fv-core's preprocessing, the engines, the outputs read at the thresholds chosen on
//! validation); this module adds who, what and when.

use crate::sources::input::Input;
use crate::sources::input_error::InputError;
use fv_core::result::{ResultMessage, Source, SourceKind, Study, Timing, RESULT_SCHEMA};
use fv_runtime::{Model, Models, ReadOptions};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// Who is reporting, and how.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Site name.
    pub site: String,
    /// Device id.
    pub device: String,
    /// Secret mixed into the StudyInstanceUID hash; never sent.
    pub uid_salt: String,
    /// How the models read each image.
    pub read: ReadOptions,
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
/// repeats apart. Nothing writes a name beside its pseudonym, in a log or elsewhere: that
/// table would undo the pseudonyms.
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
            localization: None,
            scope: None,
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
        let r = self.models.read(&input.image, &self.config.read)?;
        m.fracture_probability = r.probability;
        m.finding = Some(r.finding);
        m.scope = r.scope;
        m.boxes = r.boxes;
        m.localization = r.localization;
        Ok(r.timing)
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
        name: crate::sources::input::file_name(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fv_core::result::ErrorInfo;

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
