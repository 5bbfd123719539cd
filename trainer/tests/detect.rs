//! `fv-train detect` end to end on the committed FracAtlas sample: each detector trains for a
//! step, is evaluated on validation and test, and exports to an ONNX graph that tract runs
//! to the same output burn gives.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::sample_dir;
use fv_core::manifest::{Manifest, Precision, Task};
use fv_runtime::TractEngine;
use fv_train::data::FracAtlas;
use fv_train::detect::export::export_detector_run;
use fv_train::detect::{build_detector, evaluate_run, train, DetectConfig, DetectorKind};
use fv_train::export::ExportOptions;
use fv_train::models::yolov8::decode;
use fv_train::onnx::graph;
use sha2::{Digest, Sha256};

fn smoke_config(kind: DetectorKind) -> DetectConfig {
    DetectConfig {
        image_size: 64,
        epochs: 1,
        batch_size: 2,
        close_mosaic: 0,
        ..DetectConfig::study(kind)
    }
}

fn train_evaluate_export(kind: DetectorKind, export: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let device = Device::flex();
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let config = smoke_config(kind);
    let summary = train(&data, &config, &run, &device, false).unwrap();
    assert_eq!(summary.epochs.len(), 1);
    assert_eq!(summary.best_epoch, 1);
    let loss = summary.epochs[0].loss;
    assert!(loss.iter().all(|l| l.is_finite() && *l >= 0.0), "{loss:?}");
    // The sample's official split: 1 validation and 2 test images, 1 and 2 boxes at least.
    let m = evaluate_run(&data, &run, true, &device).unwrap();
    assert_eq!(m.valid.images, 1);
    let test = m.test.as_ref().unwrap();
    assert_eq!(test.images, 2);
    assert!(test.boxes >= 2);
    for v in [m.valid.map50, m.valid.map50_95, test.map50, test.map50_95] {
        assert!((0.0..=1.0).contains(&v), "{v}");
    }
    // The reported splits carry their intervals (each epoch's validation does not).
    for s in [&m.valid, test] {
        let [low, high] = s
            .map50_interval
            .expect("an evaluated split's mAP50 interval");
        assert!(
            low <= s.map50 && s.map50 <= high,
            "{low} {} {high}",
            s.map50
        );
    }
    assert!(m.thresholds.scores.suspicious <= m.thresholds.scores.definite);
    for f in [
        "metrics.json",
        "pr.png",
        "test_grid.png",
        "best.safetensors",
        "train_log.csv",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    if !export {
        return;
    }

    let out = tmp.path().join("models");
    let e = export_detector_run(&run, &ExportOptions::new(Precision::Fp32, "det", &out)).unwrap();
    let bytes = std::fs::read(&e.onnx).unwrap();
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&e.manifest).unwrap()).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(manifest.onnx_sha256, sha);
    assert_eq!(manifest.task, Task::Detect);
    assert_eq!(manifest.outputs[0].shape, vec![1, 5, 84]);

    // tract on the exported graph against burn's decode, on one input.
    let model = build_detector(&config, Some(&run.join("best.safetensors")), &device).unwrap();
    let x: Vec<f32> = (0..3 * 64 * 64)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let want = decode(
        &model.forward(Tensor::<4>::from_data(
            TensorData::new(x.clone(), [1, 3, 64, 64]),
            &device,
        )),
        model.reg_max(),
    )
    .into_data()
    .try_to_vec::<f32>()
    .unwrap();
    let got = TractEngine::from_bytes(
        &bytes,
        std::path::Path::new("test detector"),
        &[1, 3, 64, 64],
    )
    .unwrap()
    .run_values(&x)
    .unwrap()
    .remove(0);
    assert_eq!(got.len(), want.len());
    // Boxes are in pixels (up to 64), scores in [0, 1]: compare relative to the magnitude.
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-4,
        "{kind:?}: tract and burn differ by {worst} (relative)"
    );

    // int8: calibrated on the sample's training images, scored on its validation and test.
    let e8 = export_detector_run(
        &run,
        &ExportOptions {
            data: Some(sample_dir()),
            calib_images: 2,
            ..ExportOptions::new(Precision::Int8, "det", &out)
        },
    )
    .unwrap();
    assert!(e8.onnx.ends_with("det-int8.onnx"));
    let c = e8.content.conversion.as_ref().unwrap();
    assert!(
        c.valid_map50.is_some() && c.valid_roc_auc.is_none(),
        "{c:?}"
    );
    assert_eq!(c.calibration_images, Some(2));
    let q = graph::decode(&std::fs::read(&e8.onnx).unwrap()).unwrap();
    let ops = graph::op_counts(q.graph.as_ref().unwrap());
    assert!(
        ops.get("QuantizeLinear").copied().unwrap_or(0) > 0,
        "{ops:?}"
    );

    let err =
        export_detector_run(&run, &ExportOptions::new(Precision::Int8, "det", &out)).unwrap_err();
    assert!(err.to_string().contains("needs --data"), "{err}");
    let err =
        export_detector_run(&run, &ExportOptions::new(Precision::Fp16, "det", &out)).unwrap_err();
    assert!(err.to_string().contains("fp32 or int8"), "{err}");
    let err = export_detector_run(
        &tmp.path().join("none"),
        &ExportOptions::new(Precision::Fp32, "d", &out),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

#[test]
fn yolov8_effl0_trains_evaluates_and_exports() {
    train_evaluate_export(DetectorKind::Yolov8Effl0, true);
}

#[test]
fn yolov8n_trains_evaluates_and_exports() {
    train_evaluate_export(DetectorKind::Yolov8n, true);
}

#[test]
fn yolov8s_trains_and_evaluates() {
    train_evaluate_export(DetectorKind::Yolov8s, false);
}

#[test]
fn a_bad_image_size_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = FracAtlas::open(&sample_dir()).unwrap();
    let config = DetectConfig {
        image_size: 100,
        ..smoke_config(DetectorKind::Yolov8n)
    };
    let err = train(&data, &config, tmp.path(), &Device::flex(), false).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
}
