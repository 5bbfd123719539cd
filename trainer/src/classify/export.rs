//! `fv-train export`: a run's best checkpoint to ONNX with its manifest, the contract the
//! edge reads (see `fv_core::manifest`).
//!
//! The graph is captured from the burn forward pass by `burn-onnx` (its `export` feature):
//! the model as trained, with a softmax on top so the edge reads probabilities. It is then
//! simplified (BatchNorm folded, ReLU6 as Clip) and, for fp16 and int8, converted; a converted
//! graph is scored with tract on the validation and test splits, its thresholds are chosen
//! again on validation, and the manifest carries its own metrics and its change from fp32.

use super::eval::{ChosenThresholds, ClassifyMetrics, Prediction, SplitReport};
use super::train::{build_model, TrainConfig};
use super::{split_samples, RunData};
use crate::data::classify::{load_planes, to_batch, Plane, Sample};
use crate::data::{FracAtlas, SplitPart};
use crate::export::{
    training_record, write_manifest, write_model, AbsDiffs, ExportOptions, Exported,
};
use crate::onnx::quantize::quantize;
use crate::onnx::{fp16::to_fp16, graph, simplify::simplify};
use crate::run::RunDir;
use anyhow::Context as _;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use burn_onnx::export::OnnxExporter;
use fv_core::manifest::{
    Conversion, Manifest, OutputSpec, Precision, Task, TestMetrics, Thresholds, MANIFEST_VERSION,
};
use fv_core::metrics::classification::roc_auc;
use fv_core::Probability;
use fv_runtime::TractEngine;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use rayon::prelude::*;
use std::path::Path;

fn metric_values(m: &ClassifyMetrics) -> Option<TestMetrics> {
    m.test.as_ref().map(SplitReport::test_metrics)
}

/// Softmax over two logits, written as `[σ(l₀ − l₁), σ(l₁ − l₀)]`: the same values, with
/// ops burn-onnx 0.22 lowers (it has no Softmax).
fn two_class_probabilities(logits: Tensor<2>) -> Tensor<2> {
    let [b, _] = logits.dims();
    let d = logits.clone().slice([0..b, 1..2]) - logits.slice([0..b, 0..1]);
    Tensor::cat(vec![sigmoid(-d.clone()), sigmoid(d)], 1)
}

/// Exports `run`'s best checkpoint as `out_dir/<name>.onnx` and `out_dir/<name>.json`
/// (fp32), or `<name>-fp16.*` / `<name>-int8.*`.
pub fn export_run(run: &RunDir, opts: &ExportOptions) -> anyhow::Result<Exported> {
    anyhow::ensure!(
        run.best().is_file(),
        "{}: no checkpoint; train the run with `fv-train classify` first",
        run.best().display()
    );
    let read = |file: &str| -> anyhow::Result<String> {
        let p = run.0.join(file);
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let config: TrainConfig = serde_json::from_str(&read("config.json")?)?;
    let metrics = ClassifyMetrics::read(&run.0)?;
    let device = Device::flex();
    let model = build_model(&config, Some(&run.best()), &device)?;
    let s = config.image_size as usize;
    let shape = [1, 3, s, s];
    let sample = Tensor::<4>::zeros(shape, &device);
    let onnx = OnnxExporter::new()
        .export(&model, sample, |m, x| two_class_probabilities(m.forward(x)))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot export {} to ONNX: {e}",
                run.0.display(),
                config.model.name()
            )
        })?;
    let mut proto = graph::decode(&onnx.into_bytes())?;
    let simplified = simplify(graph::graph_mut(&mut proto)?);
    tracing::info!("simplified the graph: {simplified:?}");
    let fp32 = graph::encode(&proto);

    let (bytes, thresholds, test_metrics, conversion, calibration) = match opts.precision {
        Precision::Fp32 => (
            fp32,
            Thresholds {
                suspicious: metrics.thresholds.suspicious.threshold,
                definite: metrics.thresholds.definite.threshold,
            },
            metric_values(&metrics),
            None,
            metrics.calibration,
        ),
        Precision::Fp16 | Precision::Int8 => {
            let data_dir = opts.data.as_deref().with_context(|| {
                format!(
                    "--precision {:?} needs --data DIR (FracAtlas): the converted model is \
                     calibrated and measured on the run's own splits",
                    opts.precision
                )
            })?;
            let run_data: RunData = serde_json::from_str(&read("data.json")?)?;
            let data = FracAtlas::open(data_dir)
                .with_context(|| format!("loading FracAtlas from {}", data_dir.display()))?;
            let split = data.classification_split(&run_data.split)?;
            let [train_s, valid_s, test_s] = split_samples(&data, &split, run_data.limit_per_class);
            let mut method = "fp16 weights and compute, fp32 input and output (Cast)".to_owned();
            let mut calib = (None, None);
            if opts.precision == Precision::Fp16 {
                to_fp16(&mut proto)?;
            } else {
                let mut pool = train_s.clone();
                pool.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(config.seed));
                pool.truncate(opts.calib_images.max(1));
                let (planes, _) = load_planes(&pool, config.image_size);
                let (mean, std) = config.model.mean_std();
                let images: Vec<Vec<f32>> = planes
                    .iter()
                    .map(|(_, p)| to_batch(&[p], mean, std))
                    .collect();
                let report = quantize(&mut proto, &images, &shape, opts.calibration)?;
                tracing::info!("quantized: {report:?}");
                method = report.method();
                calib = (Some(opts.calibration.to_string()), Some(images.len()));
            }
            let bytes = graph::encode(&proto);
            let reference = TractEngine::from_bytes(&fp32, Path::new("the fp32 export"), &shape)?;
            let converted =
                TractEngine::from_bytes(&bytes, Path::new("the converted export"), &shape)?;
            let (mean, std) = config.model.mean_std();
            let valid_s = match opts.check_limit {
                None => valid_s,
                Some(n) => {
                    let pos = valid_s.iter().filter(|s| s.label).take(n / 2);
                    let neg = valid_s.iter().filter(|s| !s.label).take(n - n / 2);
                    pos.chain(neg).cloned().collect()
                }
            };
            let (valid_planes, mut failures) = load_planes(&valid_s, config.image_size);
            let valid_ref = onnx_scores(&reference, &valid_planes, mean, std)?;
            let valid = onnx_scores(&converted, &valid_planes, mean, std)?;
            let (auc_ref, auc_conv) = (auc(&valid_ref), auc(&valid));
            let diffs: Vec<f64> = valid_ref
                .iter()
                .zip(&valid)
                .map(|(a, b)| (a.probability.get() - b.probability.get()).abs())
                .collect();
            let diffs = AbsDiffs::of(diffs);
            let conversion = Conversion {
                reference: Precision::Fp32,
                method,
                calibration: calib.0,
                calibration_images: calib.1,
                valid_images: valid.len(),
                valid_roc_auc_reference: Some(auc_ref),
                valid_roc_auc: Some(auc_conv),
                valid_roc_auc_change: Some(auc_conv - auc_ref),
                valid_map50_reference: None,
                valid_map50: None,
                valid_map50_95_reference: None,
                valid_map50_95: None,
                valid_max_abs_probability_diff: diffs.max,
                valid_mean_abs_probability_diff: diffs.mean,
                valid_median_abs_probability_diff: diffs.median,
                metrics_from_reference: opts.check_limit.is_some(),
            };
            if opts.check_limit.is_some() {
                (
                    bytes,
                    Thresholds {
                        suspicious: metrics.thresholds.suspicious.threshold,
                        definite: metrics.thresholds.definite.threshold,
                    },
                    metric_values(&metrics),
                    Some(conversion),
                    metrics.calibration,
                )
            } else {
                let (test_planes, f) = load_planes(&test_s, config.image_size);
                failures.extend(f);
                let mut test = onnx_scores(&converted, &test_planes, mean, std)?;
                // The converted graph gets its own calibration, as it gets its own thresholds.
                let mut valid = valid;
                let (calibration, uncalibrated_ece) =
                    crate::classify::eval::calibrate(&mut valid, &mut [&mut test]);
                let chosen = ChosenThresholds::choose(&valid)
                    .context("the validation split needs both classes to choose thresholds")?;
                let converted_metrics = ClassifyMetrics {
                    model: format!("{} ({:?}, tract)", config.model.name(), opts.precision),
                    checkpoint: run.best().display().to_string(),
                    valid: SplitReport::new(SplitPart::Valid, &valid, &chosen),
                    test: Some(
                        SplitReport::new(SplitPart::Test, &test, &chosen)
                            .with_intervals(&test, &chosen),
                    ),
                    thresholds: chosen,
                    load_failures: failures.into_iter().map(|f| f.message).collect(),
                    calibration,
                    uncalibrated_ece,
                };
                (
                    bytes,
                    Thresholds {
                        suspicious: converted_metrics.thresholds.suspicious.threshold,
                        definite: converted_metrics.thresholds.definite.threshold,
                    },
                    metric_values(&converted_metrics),
                    Some(conversion),
                    converted_metrics.calibration,
                )
            }
        }
    };

    let name = &opts.name;
    // One manifest name for every precision, so the edge can choose among them; the files
    // are told apart by a suffix.
    let stem = match opts.precision {
        Precision::Fp32 => name.clone(),
        Precision::Fp16 => format!("{name}-fp16"),
        Precision::Int8 => format!("{name}-int8"),
    };
    let (onnx_path, onnx_sha256) = write_model(&opts.out_dir, &stem, &bytes)?;

    let g = proto
        .graph
        .as_ref()
        .context("the ONNX model has no graph")?;
    let mut input = config.input_spec();
    if let Some(i) = g.input.first() {
        input.name = i.name.clone();
    }
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        name: name.clone(),
        version: opts.version.clone(),
        task: Task::Classify,
        input,
        outputs: vec![OutputSpec {
            name: g
                .output
                .first()
                .map_or_else(|| "output".into(), |o| o.name.clone()),
            shape: vec![1, 2],
            meaning: fv_core::manifest::OutputMeaning::Probabilities,
        }],
        labels: fv_core::reading::CLASSIFIER_LABELS
            .map(String::from)
            .to_vec(),
        thresholds,
        probability_calibration: calibration,
        prevalence: None,
        fusion: None,
        test_time_hflip: false,
        nms: None,
        applicability: None,
        expected: None,
        precision: opts.precision,
        metrics: test_metrics,
        training: Some(training_record(
            &run.0,
            "fractured: official split; non-fractured: seeded hold-out (see data.json)".into(),
            format!(
                "fv-train classify --model {} (see config.json)",
                config.model.name()
            ),
        )),
        conversion,
        onnx_sha256,
    };
    write_manifest(&opts.out_dir, &stem, onnx_path, manifest)
}

/// ROC-AUC of predictions (NaN without both classes).
fn auc(p: &[Prediction]) -> f64 {
    roc_auc(&crate::classify::eval::scored(p)).unwrap_or(f64::NAN)
}

/// Scores preprocessed images with an ONNX graph in tract (output 0, column 1: fracture).
fn onnx_scores(
    runner: &TractEngine,
    planes: &[(Sample, Plane)],
    mean: [f32; 3],
    std: [f32; 3],
) -> anyhow::Result<Vec<Prediction>> {
    planes
        .par_iter()
        .map(|(s, p)| {
            let out = runner.run_values(&to_batch(&[p], mean, std))?;
            let p = *out
                .first()
                .and_then(|o| o.get(1))
                .context("the graph's first output has no fracture column")?;
            Ok(Prediction {
                id: s.id.clone(),
                fractured: s.label,
                probability: Probability::saturating(p as f64),
            })
        })
        .collect()
}
