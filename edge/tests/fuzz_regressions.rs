//! The fuzz targets' seeds and every input a fuzzer ever crashed on (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`), run through the same calls as the targets in `fuzz/`, in
//! the ordinary test build: a fixed crash stays fixed without cargo fuzz.

mod common;

use fv_core::imaging::{decode_bytes, DecodeOptions};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = common::workspace().join("fuzz").join(kind).join(target);
        if let Ok(d) = std::fs::read_dir(&dir) {
            v.extend(d.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    v.sort();
    v
}

fn options() -> DecodeOptions {
    DecodeOptions::with_max_pixels(1 << 22)
}

#[test]
fn image_decode() {
    let files = inputs("image_decode");
    assert!(files.len() >= 4, "seeds: {files:?}");
    let mut decoded = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if decode_bytes(&bytes, f, &options()).is_ok() {
            decoded += 1;
        }
    }
    // The seeds are valid images: the target starts from inputs that reach the pixels.
    assert!(decoded >= 4, "{decoded} of {} decoded", files.len());
}

#[test]
fn dicom() {
    let files = inputs("dicom");
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let t = std::time::Instant::now();
        let r = fv_edge::sources::dicom::from_bytes(&bytes, f, &options());
        if f.to_string_lossy().contains("/regressions/") {
            // Each made dicom-rs reserve and zero-fill ~1 GB for a value the file did not
            // hold: now refused up front, at once.
            let e = r.as_ref().err().expect("refused");
            assert_eq!(e.code, "corrupt", "{}", e.message);
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "{:?}",
                t.elapsed()
            );
        }
        if f.to_string_lossy().contains("/seeds/") {
            let d = r.unwrap_or_else(|e| panic!("seed {}: {}", f.display(), e.message));
            // The same bytes read from the file give the same image.
            let from_file = fv_edge::sources::dicom::load(f, &options()).unwrap();
            assert_eq!(d.image, from_file.image);
        }
    }
}

#[test]
fn manifest() {
    let files = inputs("manifest");
    assert!(!files.is_empty(), "no seeds in fuzz/seeds/manifest");
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let r = fv_core::manifest::Manifest::from_json(&text, Path::new("x.json"));
        // The seeds are valid manifests: the target starts from inputs that get past parsing.
        if f.to_string_lossy().contains("/seeds/") {
            r.unwrap_or_else(|e| panic!("seed {}: {e}", f.display()));
        }
    }
}

#[test]
fn config() {
    let files = inputs("config");
    assert!(!files.is_empty(), "no seeds in fuzz/seeds/config");
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let parsed = toml::from_str::<fv_edge::config::Layer>(&text);
        if f.to_string_lossy().contains("/seeds/") {
            assert!(parsed.is_ok(), "seed {}: {parsed:?}", f.display());
        }
        if let Ok(l) = parsed {
            let _ = toml::to_string(&fv_edge::config::Layer::default().merge(&l));
        }
    }
}

#[test]
fn dimse() {
    let files = inputs("dimse");
    assert!(files.len() >= 2, "seeds: {files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let pdu = dicom_ul::pdu::read_pdu(&bytes[..], fv_edge::dimse::MAX_PDU_BYTES, true);
        // A .pdu file is one PDU; a .cmd file a command set on its own.
        let commands: Vec<Vec<u8>> = match pdu {
            Ok(Some(dicom_ul::pdu::Pdu::PData { data })) => {
                data.into_iter().map(|v| v.data).collect()
            }
            _ => vec![bytes.clone()],
        };
        for c in commands {
            let t = std::time::Instant::now();
            let r = fv_edge::dimse::Command::decode(&c);
            if f.to_string_lossy().contains("/seeds/") {
                r.unwrap_or_else(|e| panic!("seed {}: {e}", f.display()));
            } else {
                // Each once made fv-edge reserve and zero what a peer declared.
                let e = r.expect_err("refused");
                assert!(e.contains("declares"), "{}: {e}", f.display());
                assert!(t.elapsed() < std::time::Duration::from_millis(100));
            }
        }
    }
}
