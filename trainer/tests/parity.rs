//! Our models against their reference implementations, on fixtures made by the scripts in
//! `trainer/scripts/` (CI needs no Python).

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use fv_train::detect::assign::AssignerConfig;
use fv_train::detect::loss::{detection_loss, LossGains};
use fv_train::models::efficientnet_lite::{EfficientNetLiteConfig, LiteVariant};
use fv_train::models::vit::{hf_key_remapping, VitConfig, VitHead};
use fv_train::models::yolov8::{decode, ultralytics_key_remapping, YoloV8Config};
use fv_train::weights::{load_safetensors, WeightsError};
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Reads named tensors from a safetensors fixture.
fn fixture(path: &Path, names: &[&str]) -> Vec<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors_view(&bytes);
    names.iter().map(|n| st(n)).collect()
}

fn safetensors_view(bytes: &[u8]) -> impl Fn(&str) -> (Vec<usize>, Vec<f32>) + '_ {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    move |name: &str| {
        let t = &header[name];
        assert_eq!(t["dtype"], "F32", "{name}");
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        let [a, b]: [usize; 2] = serde_json::from_value(t["data_offsets"].clone()).unwrap();
        let data = bytes[8 + n + a..8 + n + b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (shape, data)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `model` with every tensor of the committed file `rel`, each filling its place.
fn load_whole<M: burn::module::Module>(model: M, rel: &str) -> M {
    let (model, report) = load_safetensors(model, &repo(rel), &[], &[]).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    assert!(
        report.kept_fresh.is_empty(),
        "not loaded: {:?}",
        report.kept_fresh
    );
    model
}

#[test]
fn efficientnet_lite0_matches_the_reference_with_imagenet_weights() {
    let device = Device::flex();
    let model = EfficientNetLiteConfig::new()
        .with_num_classes(1000)
        .init(&device);
    let model = load_whole(
        model,
        "models/pretrained/efficientnet-lite0-imagenet.safetensors",
    );
    let fx = fixture(
        &repo("trainer/tests/fixtures/efficientnet_lite0_parity.safetensors"),
        &["input", "features", "logits"],
    );
    let (shape, input) = &fx[0];
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape.clone()), &device);
    let feats = model
        .features(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let logits = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
    let d_feats = max_abs_diff(&feats, &fx[1].1);
    let d_logits = max_abs_diff(&logits, &fx[2].1);
    assert!(d_feats <= 1e-4, "features differ by {d_feats}");
    assert!(d_logits <= 1e-4, "logits differ by {d_logits}");
}

/// Lite2 has no reference fixture (that needs the Python reference); its converted weights
/// must fill every tensor of the model at its exact shape, with nothing left over: the
/// stages' widths, depths, kernels and expansions as published.
#[test]
fn efficientnet_lite2_takes_every_published_tensor() {
    let device = Device::flex();
    let model = EfficientNetLiteConfig::new()
        .with_variant(LiteVariant::Lite2)
        .with_num_classes(1000)
        .init(&device);
    let model = load_whole(
        model,
        "models/pretrained/efficientnet-lite2-imagenet.safetensors.gz",
    );
    let x = Tensor::<4>::zeros([1, 3, 64, 64], &device);
    assert_eq!(model.features(x.clone()).dims(), [1, 1280]);
    // The ends of the stages a detector's neck reads, as the stage table gives them, are
    // where the published weights put the widths.
    let (blocks, widths) = LiteVariant::Lite2.pyramid();
    assert_eq!((blocks, widths), ([6, 14, 20], [48, 120, 352]));
    assert_eq!(model.pyramid(x, blocks).map(|t| t.dims()[1]), widths);
    assert_eq!(LiteVariant::Lite0.pyramid(), ([4, 10, 15], [40, 112, 320]));
}

/// `yolov8-effl2`: the published Lite2 weights fill its backbone, and its neck reads the
/// three stage ends at strides 8, 16 and 32 (a wrong tap or width fails the forward pass).
#[test]
fn yolov8_effl2_starts_from_lite2_and_reads_three_levels() {
    use fv_train::detect::{build_detector, DetectConfig, DetectorKind};
    let device = Device::flex();
    let config = DetectConfig::study(DetectorKind::Yolov8Effl2);
    assert!(config.weights.is_some(), "Lite2's ImageNet weights ship");
    let model = build_detector(&config, None, &device).unwrap();
    let raw = model.forward(Tensor::<4>::zeros([1, 3, 128, 96], &device));
    assert_eq!(raw.grids, [(16, 12), (8, 6), (4, 3)]);
    assert_eq!(raw.scores.dims(), [1, 1, 16 * 12 + 8 * 6 + 4 * 3]);
}

#[test]
fn wrong_weights_name_the_tensor_and_both_shapes() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    // Weights for a 1000-class head, loaded into a 2-class model with the head not skipped.
    let model = EfficientNetLiteConfig::new()
        .with_num_classes(2)
        .init(&device);
    let err = load_safetensors(
        model,
        &repo("models/pretrained/efficientnet-lite0-imagenet.safetensors"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(&err, WeightsError::Shape { tensor, expected, found, .. }
            if tensor == "fc.weight" && expected == &[1280, 2] && found == &[1280, 1000]),
        "{err}"
    );

    // A file that lacks most tensors.
    let partial = tmp.path().join("partial.safetensors");
    let small = EfficientNetLiteConfig::new().init(&device);
    let mut store = SafetensorsStore::from_file(&partial)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_regex(r"^fc\.");
    small.save_into(&mut store).unwrap();
    let err = load_safetensors(
        EfficientNetLiteConfig::new().init(&device),
        &partial,
        &[],
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    let err = load_safetensors(
        EfficientNetLiteConfig::new().init(&device),
        &tmp.path().join("nope.safetensors"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

fn vit_parity(dir: &str, config: VitConfig, output: &str) {
    let device = Device::flex();
    let model = config.init(&device);
    let (model, report) = load_safetensors(
        model,
        &repo(&format!("trainer/tests/fixtures/{dir}/model.safetensors")),
        // DINOv2 checkpoints have no head; ViT's logits below prove its head loaded.
        &["classifier."],
        &hf_key_remapping(),
    )
    .unwrap();
    // DINOv2's mask token is used only in its self-supervised pretraining.
    assert!(
        report.unused.iter().all(|u| u.contains("mask_token")),
        "unused: {:?}",
        report.unused
    );
    let fx = fixture(
        &repo(&format!("trainer/tests/fixtures/{dir}/io.safetensors")),
        &["input", output],
    );
    let (shape, input) = &fx[0];
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape.clone()), &device);
    let got = if output == "logits" {
        model.forward(x)
    } else {
        model.pooled(x)
    };
    let got = got.into_data().try_to_vec::<f32>().unwrap();
    let d = max_abs_diff(&got, &fx[1].1);
    assert!(d <= 1e-4, "{dir}: {output} differ by {d}");
}

#[test]
fn vit_matches_transformers() {
    let mut c = VitConfig::new(8, 4, 32, 2, 4, 64, 1e-12, false, VitHead::Cls);
    c.num_classes = 2;
    vit_parity("vit_tiny", c, "logits");
}

#[test]
fn dinov2_matches_transformers() {
    let c = VitConfig::new(14, 2, 32, 2, 4, 64, 1e-6, true, VitHead::ClsAndMeanPatch);
    vit_parity("dinov2_tiny", c, "pooled");
}

#[test]
fn yolov8_matches_ultralytics() {
    let device = Device::flex();
    let model = YoloV8Config::new(0.33, 0.0625).init(&device);
    let (model, report) = load_safetensors(
        model,
        &repo("trainer/tests/fixtures/yolov8_tiny/model.safetensors"),
        &[],
        &ultralytics_key_remapping(),
    )
    .unwrap();
    // The DFL's bin indices are constants here, not parameters.
    assert_eq!(report.unused, vec!["m22.dfl.conv.weight".to_owned()]);
    assert!(report.kept_fresh.is_empty(), "{:?}", report.kept_fresh);
    let fx = fixture(
        &repo("trainer/tests/fixtures/yolov8_tiny/io.safetensors"),
        &["input", "boxes", "scores", "decoded"],
    );
    let (shape, input) = &fx[0];
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape.clone()), &device);
    let raw = model.forward(x);
    let decoded = decode(&raw, model.reg_max());
    for (name, got, want) in [
        ("boxes", raw.boxes, &fx[1]),
        ("scores", raw.scores, &fx[2]),
        ("decoded", decoded, &fx[3]),
    ] {
        assert_eq!(got.dims().to_vec(), want.0, "{name}");
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let d = max_abs_diff(&got, &want.1);
        // Decoded boxes are in pixels (up to ~100): relative 1e-5.
        let tol = if name == "decoded" { 1e-3 } else { 1e-4 };
        eprintln!("yolov8 {name}: max abs diff {d:e}");
        assert!(d <= tol, "yolov8 {name} differ by {d}");
    }
}

#[test]
fn yolov8_loss_matches_ultralytics() {
    let device = Device::flex();
    let (model, _) = load_safetensors(
        YoloV8Config::new(0.33, 0.0625).init(&device),
        &repo("trainer/tests/fixtures/yolov8_tiny/model.safetensors"),
        &[],
        &ultralytics_key_remapping(),
    )
    .unwrap();
    let fx = fixture(
        &repo("trainer/tests/fixtures/yolov8_tiny/io.safetensors"),
        &["loss_input", "loss_targets", "loss_parts"],
    );
    let (shape, input) = &fx[0];
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape.clone()), &device);
    let mut gt = vec![Vec::new(); shape[0]];
    for t in fx[1].1.chunks(5) {
        gt[t[0] as usize].push(([t[1], t[2], t[3], t[4]], 0usize));
    }
    let raw = model.forward(x);
    let (_, parts) = detection_loss(
        &raw,
        &gt,
        model.reg_max(),
        &LossGains::default(),
        &AssignerConfig::default(),
    );
    let want = &fx[2].1;
    for (name, got, want) in [
        ("box", parts.box_, want[0]),
        ("cls", parts.cls, want[1]),
        ("dfl", parts.dfl, want[2]),
    ] {
        let rel = (got - want as f64).abs() / (want as f64).abs().max(1e-6);
        eprintln!("yolov8 loss {name}: {got} vs ultralytics {want} (relative {rel:e})");
        assert!(rel <= 1e-4, "{name} loss {got} vs ultralytics {want}");
    }
}
