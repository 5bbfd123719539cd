//! ONNX export: the exported graph, run by tract, gives what burn gives; the manifest reads
//! back through fv-core and its hash matches the file.

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use common::{sample_dir, sample_run_data};
use fv_core::manifest::{Manifest, Precision};
use fv_runtime::TractEngine;
use fv_train::classify::classify;
use fv_train::classify::export::export_run;
use fv_train::classify::train::{build_model, TrainConfig};
use fv_train::export::ExportOptions;
use fv_train::fuse::{fuse, FuseOptions};
use fv_train::models::ModelKind;
use fv_train::onnx::graph;
use fv_train::run::RunDir;
use sha2::{Digest, Sha256};
use std::path::Path;

#[test]
fn fp32_export_matches_burn_in_tract() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir(tmp.path().join("run"));
    let device = Device::flex();
    let mut config = TrainConfig::study(ModelKind::EfficientnetLite0);
    config.image_size = 64;
    config.epochs = 1;
    let run_data = sample_run_data(config.seed);
    classify(&sample_dir(), &run_data, &config, &run, &device, false).unwrap();

    let out = tmp.path().join("models");
    let e = export_run(
        &run,
        &ExportOptions::new(Precision::Fp32, "tiny-effl0", &out),
    )
    .unwrap();
    let manifest = Manifest::from_path(&e.manifest).unwrap();
    let bytes = std::fs::read(&e.onnx).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(manifest.onnx_sha256, sha);
    assert_eq!(manifest.input.width, 64);

    // A deterministic, image-like input.
    let n = 3 * 64 * 64;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0 * 4.0 - 2.0)
        .collect();
    let model = build_model(&config, Some(&run.best()), &device).unwrap();
    let want = softmax(
        model.forward(Tensor::<4>::from_data(
            TensorData::new(x.clone(), [1, 3, 64, 64]),
            &device,
        )),
        1,
    )
    .into_data()
    .try_to_vec::<f32>()
    .unwrap();

    let got = run_tract(&e.onnx, x.clone());
    assert_eq!(got.len(), 2);
    assert!(
        max_diff(&got, &want) <= 1e-4,
        "tract {got:?} vs burn {want:?}"
    );

    // The exported graph is simplified: BatchNorm folded into Conv, ReLU6 as one Clip.
    let ops = graph::op_counts(graph::decode(&bytes).unwrap().graph.as_ref().unwrap());
    assert!(!ops.contains_key("BatchNormalization"), "{ops:?}");
    assert_eq!(ops.get("Clip"), Some(&33), "{ops:?}");

    // The fusion with the committed detector, each image read as the edge reads it.
    let detector =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/yolov8-effl0-fracatlas.json");
    let fused_dir = tmp.path().join("fusion");
    let report = fuse(&FuseOptions {
        classifier: e.manifest.clone(),
        detector,
        run: run.0.clone(),
        data: sample_dir(),
        out: fused_dir.clone(),
        write: true,
    })
    .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let n: usize = ["valid", "test"]
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let r = &report.reports["classifier"][i];
            r.n_fractured + r.n_non_fractured
        })
        .sum();
    let csv = std::fs::read_to_string(fused_dir.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * n, "{csv}");
    assert!(fused_dir.join("calibration.png").is_file());
    // Written or not, the manifest still reads, and says what the report says: the fusion
    // when kept, test-time flips when validation chose them. The classifier alone keeps its
    // manifest's thresholds, or with flips gets those chosen on them.
    let written = Manifest::from_path(&e.manifest).unwrap();
    assert_eq!(written.fusion.is_some(), report.kept);
    assert_eq!(written.test_time_hflip, report.hflip.helps);
    let definite = match report.hflip.helps {
        true => written.thresholds.definite,
        false => manifest.thresholds.definite,
    };
    assert_eq!(report.thresholds["classifier"].definite.threshold, definite);

    // fp16 and int8 from the same run, checked against burn on the same input.
    // Stated tolerances in probability: fp16 ≤ 0.01; int8 ≤ 0.1 (a 64-pixel model
    // calibrated on 4 images; the real model is measured in its manifest).
    for (precision, tol) in [(Precision::Fp16, 0.01), (Precision::Int8, 0.1)] {
        let name = format!("tiny-{precision:?}");
        let opts = ExportOptions {
            data: Some(sample_dir()),
            calib_images: 4,
            check_limit: Some(2),
            ..ExportOptions::new(precision, &name, &out)
        };
        let e = export_run(&run, &opts).unwrap();
        let m = Manifest::from_path(&e.manifest).unwrap();
        assert_eq!(m.precision, precision);
        let c = m.conversion.as_ref().expect("a conversion record");
        assert_eq!(c.valid_images, 2);
        assert!(c.valid_max_abs_probability_diff <= tol, "{c:?}");
        let bytes = std::fs::read(&e.onnx).unwrap();
        let ops = graph::op_counts(graph::decode(&bytes).unwrap().graph.as_ref().unwrap());
        match precision {
            Precision::Int8 => {
                assert_eq!(c.calibration_images, Some(4));
                // 49 convolutions and the classifier's MatMul, one weight DQ each.
                assert_eq!(
                    ops.get("DequantizeLinear").copied().unwrap_or(0),
                    50 + ops["QuantizeLinear"]
                );
            }
            _ => assert_eq!(ops.get("Cast"), Some(&2), "{ops:?}"),
        }
        let got = run_tract(&e.onnx, x.clone());
        let d = max_diff(&got, &want);
        assert!(
            d as f64 <= tol,
            "{precision:?}: tract {got:?} vs burn {want:?}"
        );
    }

    // fp16 and int8 need the data to calibrate and measure on.
    let err = export_run(&run, &ExportOptions::new(Precision::Int8, "x", &out)).unwrap_err();
    assert!(err.to_string().contains("needs --data"), "{err}");

    let err = export_run(
        &RunDir(tmp.path().join("nothing")),
        &ExportOptions::new(Precision::Fp32, "x", &out),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

fn run_tract(path: &std::path::Path, x: Vec<f32>) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let runner =
        TractEngine::from_bytes(&bytes, std::path::Path::new("test graph"), &[1, 3, 64, 64])
            .unwrap();
    runner.run_values(&x).unwrap().remove(0)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}
