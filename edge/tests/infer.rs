//! `fv-edge infer` on the committed models: one valid JSON line per input, errors that name
//! the file, DICOM read as a radiologist's viewer would (rescale, window, MONOCHROME1) and
//! no patient identifier in the output.

mod common;

use common::*;
use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use std::path::{Path, PathBuf};
use std::process::Command;

fn infer(args: &[&Path], extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fv-edge"));
    cmd.arg("infer")
        .arg("--models")
        .arg(models_dir())
        .args(extra)
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("FV_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn infers_jpeg_and_dicom_alike_and_reports_failures() {
    let tmp = tempfile::tempdir().unwrap();
    // Not EXIF-rotated: the DICOM is written from the stored pixels.
    let jpeg = sample("IMG0002322.jpg");
    let dcm = tmp.path().join("study.dcm");
    dicom_from_jpeg(&jpeg, &dcm, "DX", true);
    let ct = tmp.path().join("ct.dcm");
    dicom_from_jpeg(&jpeg, &ct, "CT", true);
    let report = tmp.path().join("no-pixels.dcm");
    dicom_from_jpeg(&jpeg, &report, "DX", false);
    let garbage = tmp.path().join("notes.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let empty = tmp.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let missing = tmp.path().join("missing.jpg");
    let truncated = sample("IMG0004092.jpg");

    let inputs: Vec<PathBuf> = vec![
        jpeg.clone(),
        dcm.clone(),
        ct,
        report,
        garbage,
        empty,
        missing,
        truncated,
    ];
    let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let (code, lines, all) = infer(&refs, &[]);
    assert_eq!(code, 1, "some inputs failed: exit 1\n{all}");
    assert_eq!(lines.len(), inputs.len(), "one line per input\n{all}");
    for l in &lines {
        assert_valid(l);
    }
    let (j, d) = (&lines[0], &lines[1]);
    assert!(j["error"].is_null() && d["error"].is_null(), "{j}\n{d}");
    assert_eq!(d["source"]["kind"], "dicom");
    assert_eq!(
        d["source"]["name"], "study.dcm",
        "file name without directories"
    );
    let (pj, pd) = (
        j["fracture_probability"].as_f64().unwrap(),
        d["fracture_probability"].as_f64().unwrap(),
    );
    // The same picture through DICOM: the 12-bit round trip is exact to a grey level, and
    // a 16-bit image is brought to the model's 8 bits before the resize, as its training
    // images were, so the two readings are one. (Resized at 16 bits it read 0.753 against
    // 0.791; a wrong window, rescale or inversion moves it by whole units.)
    assert!((pj - pd).abs() < 1e-4, "JPEG {pj} vs DICOM {pd}");
    let hash = d["study"]["uid_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    for secret in ["DOE", "PID-777", "19700101", STUDY_UID] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }

    let code_of = |i: usize| lines[i]["error"]["code"].as_str().unwrap().to_owned();
    let message_of = |i: usize| lines[i]["error"]["message"].as_str().unwrap().to_owned();
    assert_eq!(code_of(2), "unsupported_modality");
    assert!(message_of(2).contains("ct.dcm") && message_of(2).contains("`CT`"));
    assert_eq!(code_of(3), "not_an_image");
    assert_eq!(code_of(4), "corrupt");
    assert!(message_of(4).contains("notes.png"));
    assert_eq!(code_of(5), "empty");
    assert_eq!(code_of(6), "io");
    assert!(message_of(6).contains("missing.jpg"));
    assert_eq!(code_of(7), "truncated");

    // All good: exit 0.
    let (code, lines, _) = infer(&[jpeg.as_path()], &[]);
    assert_eq!(code, 0);
    // With --reduced-decode this 2304×2880 JPEG is decoded at half scale in the DCT (the
    // models take 384 and 320 pixels; twice that is kept); the reading stays within 0.01.
    let (code, full, _) = infer(&[jpeg.as_path()], &["--detect", "always"]);
    assert_eq!(code, 0);
    let (_, reduced, _) = infer(
        &[jpeg.as_path()],
        &["--reduced-decode", "--detect", "always"],
    );
    let p = |l: &serde_json::Value| l["fracture_probability"].as_f64().unwrap();
    assert!(
        (p(&full[0]) - p(&reduced[0])).abs() < 0.01,
        "full {} vs model-scale {}",
        full[0],
        reduced[0]
    );
    // Boxes are in the radiograph's pixels either way.
    for b in reduced[0]["boxes"].as_array().unwrap() {
        assert!(b["x2"].as_f64().unwrap() <= 2304.0 && b["y2"].as_f64().unwrap() <= 2880.0);
    }
    assert_eq!(
        full[0]["boxes"].as_array().unwrap().len(),
        reduced[0]["boxes"].as_array().unwrap().len(),
        "full {}\nmodel-scale {}",
        full[0],
        reduced[0]
    );
    assert_eq!(lines[0]["models"][0]["precision"], "fp32");
    // The classifier ships in fp32 only (its int8 strays from fp32 by more than the bound):
    // asking for int8 names what there is.
    let (code, _, text) = infer(&[jpeg.as_path()], &["--precision", "int8"]);
    assert_ne!(code, 0);
    assert!(text.contains("has no int8 file (found: fp32)"), "{text}");
}

#[test]
fn jpeg_extended_12_bit_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("jpeg12.dcm");
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    // Not a decodable 12-bit JPEG stream: dicom-rs 0.10.1 cannot decode real ones either.
    let fragments = PixelFragmentSequence::new_fragments(vec![vec![0xFF, 0xD8, 0xFF, 0xC1, 0, 0]]);
    let elements = vec![
        s(tags::MODALITY, VR::CS, "CR"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, 8),
        us(tags::COLUMNS, 8),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, fragments),
    ];
    write_dicom(elements, "1.2.840.10008.1.2.4.51", &p);
    let (code, lines, all) = infer(&[p.as_path()], &[]);
    assert_eq!(code, 1, "{all}");
    let e = &lines[0]["error"];
    assert_eq!(e["code"], "unsupported_transfer_syntax", "{all}");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("jpeg12.dcm") && m.contains("JPEG Extended 12-bit"),
        "{m}"
    );
}

#[test]
fn a_model_that_does_not_match_its_manifest_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "efficientnet-lite0-fracatlas.json",
        "efficientnet-lite0-fracatlas.onnx",
    ] {
        std::fs::copy(models_dir().join(f), tmp.path().join(f)).unwrap();
    }
    // One flipped byte at the end of the file.
    let onnx = tmp.path().join("efficientnet-lite0-fracatlas.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&onnx, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fv-edge"))
        .arg("infer")
        .arg("--models")
        .arg(tmp.path())
        .arg(sample("IMG0002588.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("efficientnet-lite0-fracatlas.onnx") && err.contains("does not match"),
        "{err}"
    );
}

/// What the shipped classifier's scope check decides, as `infer` reports it: the committed
/// FracAtlas samples are read; a noise frame, a blank frame and a page of text made here are
/// `not_applicable`, with no probability and no boxes. Each figure behind the threshold is in
/// RESULTS.md; this holds the edge to the behaviour.
#[test]
fn images_outside_the_models_scope_are_not_applicable_with_no_probability() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.png");
    let mut state = 0x2545_f491_u32;
    image::GrayImage::from_fn(400, 480, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        image::Luma([(state >> 24) as u8])
    })
    .save(&noise)
    .unwrap();
    let blank = tmp.path().join("blank.png");
    image::GrayImage::from_pixel(373, 454, image::Luma([255]))
        .save(&blank)
        .unwrap();
    let page = tmp.path().join("page.png");
    image::GrayImage::from_fn(850, 1100, |x, y| {
        // Lines of "text": dark marks on white, 12 px rows, a margin.
        let ink = (60..790).contains(&x) && y % 18 < 10 && (x / 7 + y / 18) % 6 != 0;
        image::Luma([if ink && y > 60 && y < 1040 { 20 } else { 250 }])
    })
    .save(&page)
    .unwrap();
    let samples = [sample("IMG0002322.jpg"), sample("IMG0000002.jpg")];
    let inputs: Vec<&Path> = samples
        .iter()
        .map(PathBuf::as_path)
        .chain([noise.as_path(), blank.as_path(), page.as_path()])
        .collect();
    let (code, lines, text) = infer(&inputs, &[]);
    assert_eq!(code, 0, "{text}");
    for r in &lines[..2] {
        assert_ne!(r["finding"], "not_applicable", "{r}");
        let s = &r["scope"];
        assert!(
            s["distance"].as_f64().unwrap() <= s["threshold"].as_f64().unwrap(),
            "{r}"
        );
        assert!(r["fracture_probability"].is_number(), "{r}");
    }
    for r in &lines[2..] {
        assert_eq!(r["finding"], "not_applicable", "{r}");
        assert!(r.get("fracture_probability").is_none(), "{r}");
        assert_eq!(r["boxes"], serde_json::json!([]), "{r}");
        let s = &r["scope"];
        assert!(
            s["distance"].as_f64().unwrap() > s["threshold"].as_f64().unwrap(),
            "{r}"
        );
    }
}
