//! ONNX export: the exported graph, run by tract, gives what burn gives; the manifest reads
//! back through fv-core and its hash matches the file.

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use common::{sample_dir, sample_run_data};
use fv_core::manifest::{Manifest, Precision};
use fv_train::export::export_run;
use fv_train::models::ModelKind;
use fv_train::pipeline::classify;
use fv_train::training::{build_model, RunDir, TrainConfig};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

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
    let e = export_run(&run, Precision::Fp32, "tiny-effl0", "0.0.1", &out).unwrap();
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

    let plan = tract_onnx::onnx()
        .model_for_path(&e.onnx)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor4 = tract_ndarray::Array4::from_shape_vec((1, 3, 64, 64), x)
        .unwrap()
        .into();
    let got = plan.run(tvec!(input.into())).unwrap();
    let got: Vec<f32> = got[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(got.len(), 2);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-4, "tract {got:?} vs burn {want:?}");

    let err = export_run(
        &RunDir(tmp.path().join("nothing")),
        Precision::Fp32,
        "x",
        "0",
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

type Tensor4 = tract_onnx::prelude::Tensor;
