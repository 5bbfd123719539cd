//! The committed JSON Schemas (`core/schemas/`) are the ones the Rust types generate, and the
//! committed model manifests validate against theirs. `FV_BLESS=1` rewrites the schema files.

use fv_core::wire::schemas;
use std::path::{Path, PathBuf};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn committed(file: &str) -> serde_json::Value {
    if std::env::var_os("FV_BLESS").is_some() {
        // Being rewritten by the other test: use what it writes.
        return schemas().into_iter().find(|(f, _)| *f == file).unwrap().1;
    }
    let p = schema_dir().join(file);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run with FV_BLESS=1 to write it", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn committed_schemas_match_the_types() {
    for (file, generated) in schemas() {
        if std::env::var_os("FV_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            std::fs::write(schema_dir().join(file), text).unwrap();
        }
        assert!(
            committed(file) == generated,
            "{file} is out of date: run `FV_BLESS=1 cargo test -p fv-core --test schemas` and commit it"
        );
    }
}

#[test]
fn committed_manifests_validate() {
    let schema = committed("manifest.schema.json");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut seen = 0;
    for entry in std::fs::read_dir(&models).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", p.display());
            fv_core::manifest::Manifest::from_path(&p).unwrap();
            seen += 1;

            // The schema really constrains: a probability above 1 is refused.
            let mut bad = v.clone();
            bad["thresholds"]["definite"] = serde_json::json!(1.5);
            assert!(!validator.is_valid(&bad));
        }
    }
    assert!(seen > 0, "no manifests in {}", models.display());
}

#[test]
fn result_schema_accepts_results_and_refuses_identifiers() {
    let schema = committed("result.schema.json");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let ok = serde_json::json!({
        "schema": "fractuvision.result/1",
        "id": "0190b5a2-7c4e-7d1a-9f00-000000000001",
        "site": "clinic-a", "device": "unit-1",
        "source": {"kind": "dicom", "name": "IMG0001.dcm"},
        "study": {"uid_hash": "ab".repeat(32)},
        "captured_at": null,
        "processed_at": "2026-11-29T10:00:00.000Z",
        "fracture_probability": 0.8, "finding": "fracture",
        "boxes": [{"x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "score": 0.5, "level": "definite"}],
        "models": [{"name": "m", "version": "1", "sha256": "00", "precision": "int8"}],
        "timing_ms": {"decode": 1.0, "preprocess": 1.0, "classify": 1.0, "detect": null, "total": 3.0}
    });
    let errors: Vec<String> = validator.iter_errors(&ok).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let m: fv_core::result::ResultMessage = serde_json::from_value(ok.clone()).unwrap();
    assert_eq!(m.source.name, "IMG0001.dcm");

    // Unknown fields (a patient name, say) are refused by the schema and by the type.
    let mut leak = ok.clone();
    leak["patient_name"] = serde_json::json!("DOE^JOHN");
    assert!(!validator.is_valid(&leak));
    assert!(serde_json::from_value::<fv_core::result::ResultMessage>(leak).is_err());
    let mut bad = ok;
    bad["finding"] = serde_json::json!("maybe");
    assert!(!validator.is_valid(&bad));
}

/// What fv-edge publishes validates against the committed schemas, and what fv-fleet reads
/// back is what was published.
#[test]
fn status_and_heartbeat_as_built_validate_and_read_back() {
    use fv_core::wire::{HeartbeatMessage, StatusMessage, UnitState};
    let status = StatusMessage {
        state: UnitState::Offline,
        reason: Some("shutdown".into()),
        site: "clinic-a".into(),
        device: "unit-1".into(),
        version: "0.1.0".into(),
        models: Vec::new(),
        heartbeat_s: 30,
        ts: "2026-12-06T10:00:00Z".into(),
    };
    let heartbeat = HeartbeatMessage {
        uptime_s: 61,
        interval_s: 30,
        outbox_depth: 2,
        processed: 5,
        failed: 1,
        not_applicable: 1,
        pacs_outbox_depth: Some(0),
        ts: "2026-12-06T10:00:01Z".into(),
        ..HeartbeatMessage::default()
    };
    for (file, v) in [
        ("status.schema.json", serde_json::to_value(&status).unwrap()),
        (
            "heartbeat.schema.json",
            serde_json::to_value(&heartbeat).unwrap(),
        ),
    ] {
        let validator = jsonschema::validator_for(&committed(file)).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
        // A required field under another name is refused by the schema.
        let mut renamed = v.clone();
        let ts = renamed.as_object_mut().unwrap().remove("ts").unwrap();
        renamed["timestamp"] = ts;
        assert!(!validator.is_valid(&renamed), "{file}");
    }
    let back: HeartbeatMessage =
        serde_json::from_value(serde_json::to_value(&heartbeat).unwrap()).unwrap();
    assert_eq!(back, heartbeat);
}
