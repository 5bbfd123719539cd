//! `fv-train detect`: YOLOv8 fracture detectors on FracAtlas' official detection split
//! (574 / 82 / 61 fractured images), optionally with non-fractured images as negatives.
//!
//! AdamW with a linear warm-up and a linear decay to 1 %, mosaic until the last epochs, the
//! best epoch chosen on validation by Ultralytics' fitness (0.1 · mAP50 + 0.9 · mAP50-95),
//! then validation and test evaluated as Ultralytics and the study report them.

pub mod assign;
pub mod eval;
pub mod export;
pub mod loss;
pub mod train;

pub use train::{train, DetectSummary, EpochRecord};

use crate::data::detect::{DetAugment, DetSample};
use crate::data::{ClassificationSplitConfig, FracAtlas, SplitPart};
use crate::models::yolov8::{ultralytics_key_remapping, YoloV8, YoloV8Config};
use crate::models::ModelKind;
use crate::weights::load_safetensors;
use anyhow::Context as _;
use burn::tensor::Device;
use loss::LossGains;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The detectors `fv-train detect --model` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    /// YOLOv8n (3.0 M parameters at one class). Weights: Ultralytics' yolov8n.pt, converted.
    Yolov8n,
    /// YOLOv8s (11.1 M). Weights: yolov8s.pt, converted.
    Yolov8s,
    /// YOLOv8n's neck and head on EfficientNet-Lite0 with the ImageNet weights that ship here.
    Yolov8Effl0,
    /// The same neck and head on EfficientNet-Lite2 (its ImageNet weights ship too).
    Yolov8Effl2,
}

impl DetectorKind {
    /// The name on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Yolov8n => "yolov8n",
            DetectorKind::Yolov8s => "yolov8s",
            DetectorKind::Yolov8Effl0 => "yolov8-effl0",
            DetectorKind::Yolov8Effl2 => "yolov8-effl2",
        }
    }

    /// The architecture.
    pub fn config(self) -> YoloV8Config {
        match self {
            DetectorKind::Yolov8n => YoloV8Config::n(),
            DetectorKind::Yolov8s => YoloV8Config::s(),
            DetectorKind::Yolov8Effl0 => YoloV8Config::effl0(),
            DetectorKind::Yolov8Effl2 => YoloV8Config::effl2(),
        }
    }

    /// Input normalization: YOLOv8 reads `[0, 1]`; the EfficientNet backbone was trained
    /// on ImageNet statistics.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self.backbone() {
            Some(b) => b.mean_std(),
            None => ([0.0; 3], [1.0; 3]),
        }
    }

    /// The weights used when `--weights` is not given.
    pub fn default_weights(self) -> Option<PathBuf> {
        // COCO checkpoints are what users download; nothing ships here.
        self.backbone().and_then(ModelKind::default_weights)
    }

    /// The ImageNet classifier whose stem and blocks are the backbone, if one is.
    pub fn backbone(self) -> Option<ModelKind> {
        match self {
            DetectorKind::Yolov8Effl0 => Some(ModelKind::EfficientnetLite0),
            DetectorKind::Yolov8Effl2 => Some(ModelKind::EfficientnetLite2),
            DetectorKind::Yolov8n | DetectorKind::Yolov8s => None,
        }
    }
}

/// Everything that defines a detection run; saved as `RUN/config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectConfig {
    /// Architecture.
    pub model: DetectorKind,
    /// Starting weights (safetensors), if any.
    pub weights: Option<PathBuf>,
    /// Input side in pixels (a multiple of 32).
    pub image_size: u32,
    /// Epochs to train in all (a resumed run may raise it).
    pub epochs: usize,
    /// Images per optimizer step.
    pub batch_size: usize,
    /// Peak AdamW learning rate (Ultralytics' automatic choice for one class: 0.002).
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub lr_final: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Warm-up epochs (at least 100 steps, as Ultralytics).
    pub warmup_epochs: f64,
    /// Mosaic is switched off for this many final epochs.
    pub close_mosaic: usize,
    /// Non-fractured images added to training (from the classification split's training part).
    pub negatives: usize,
    /// Augmentation.
    pub augment: DetAugment,
    /// Loss gains.
    pub gains: LossGains,
    /// Seed for initialization, order and augmentation: a run is repeatable from it.
    pub seed: u64,
    /// At most this many images per part (smoke runs); `None` for all.
    pub limit: Option<usize>,
    /// Decay per step of the moving average of the weights that is validated and saved in
    /// their place; none in runs that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// Minutes between mid-epoch resume checkpoints (one is also written at each epoch's end).
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    /// Stop after this many steps in this invocation, with a checkpoint; `--resume` goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_step_limit: Option<usize>,
}

fn default_checkpoint_minutes() -> f64 {
    10.0
}

impl DetectConfig {
    /// The study's recipe: 100 epochs, AdamW, 640 pixels, batch 16.
    pub fn study(model: DetectorKind) -> Self {
        DetectConfig {
            model,
            weights: model.default_weights(),
            image_size: 640,
            epochs: 100,
            batch_size: 16,
            lr: 0.002,
            lr_final: 0.01,
            weight_decay: 0.0005,
            warmup_epochs: 3.0,
            close_mosaic: 10,
            negatives: 0,
            augment: DetAugment::default(),
            gains: LossGains::default(),
            seed: 0,
            limit: None,
            ema: None,
            checkpoint_minutes: default_checkpoint_minutes(),
            session_step_limit: None,
        }
    }

    /// What must match for `--resume` to continue a run: all but the epoch count (a resume
    /// may extend a run), the checkpoint interval and this invocation's step limit.
    pub(crate) fn resumable_part(&self) -> DetectConfig {
        DetectConfig {
            epochs: 0,
            checkpoint_minutes: 0.0,
            session_step_limit: None,
            ..self.clone()
        }
    }

    /// The learning rate at `step` of `total` (`per_epoch` steps an epoch).
    pub fn lr_at(&self, step: usize, per_epoch: usize) -> f64 {
        let epoch = step as f64 / per_epoch.max(1) as f64;
        let decay =
            (1.0 - epoch / self.epochs.max(1) as f64) * (1.0 - self.lr_final) + self.lr_final;
        let warm = ((self.warmup_epochs * per_epoch as f64).round() as usize).max(100);
        let ramp = if step < warm {
            (step as f64 + 1.0) / warm as f64
        } else {
            1.0
        };
        self.lr * decay * ramp
    }
}

/// The samples of each part of the official detection split, plus negatives in training.
pub fn split(data: &FracAtlas, config: &DetectConfig) -> anyhow::Result<[Vec<DetSample>; 3]> {
    let s = &data.detection_split;
    let mut parts = [
        DetSample::from_indices(data, &s.train),
        DetSample::from_indices(data, &s.valid),
        DetSample::from_indices(data, &s.test),
    ];
    // A smoke run's limit applies to the fractured images; negatives come on top.
    if let Some(n) = config.limit {
        for p in &mut parts {
            p.truncate(n);
        }
    }
    if config.negatives > 0 {
        // Negatives come from the classification split's training part only, so no image
        // that any test reports on is trained on.
        let cls = data.classification_split(&ClassificationSplitConfig::default())?;
        let neg: Vec<usize> = cls
            .train
            .iter()
            .copied()
            .filter(|&i| !data.images[i].fractured)
            .collect();
        let mut neg = DetSample::from_indices(data, &neg);
        neg.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(config.seed));
        neg.truncate(config.negatives);
        parts[0].extend(neg);
    }
    Ok(parts)
}

/// Builds a detector for `config`, from `checkpoint` if given, else from its starting weights.
pub fn build_detector(
    config: &DetectConfig,
    checkpoint: Option<&Path>,
    device: &Device,
) -> anyhow::Result<YoloV8> {
    let model = config.model.config().init(device);
    Ok(match (checkpoint, &config.weights) {
        (Some(ckpt), _) => load_safetensors(model, ckpt, &[], &[])?.0,
        (None, Some(w)) => {
            let (m, report) = match config.model.backbone() {
                // An EfficientNet's tensors (ImageNet's, or a classifier run's) are moved under
                // `effnet.` and fill the backbone, neck and head starting fresh; a whole
                // detector's (a finished run's, to go on at another input size, say) already
                // are, and fill everything.
                Some(_) => load_safetensors(
                    model,
                    w,
                    &["m", "effnet.fc."],
                    &[(
                        r"^(conv_stem|bn0|blocks|conv_head|bn1|fc|cells)\.",
                        "effnet.$1.",
                    )],
                )?,
                // A COCO (80-class) checkpoint: the class branch starts fresh.
                None => load_safetensors(model, w, &["m22.cv3."], &ultralytics_key_remapping())?,
            };
            tracing::info!(
                "loaded {} tensors from {}; {} kept fresh",
                report.applied,
                w.display(),
                report.kept_fresh.len()
            );
            m
        }
        (None, None) => model,
    })
}

/// What `RUN/metrics.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectMetrics {
    /// Architecture.
    pub model: String,
    /// The checkpoint evaluated.
    pub checkpoint: String,
    /// Input side.
    pub image_size: u32,
    /// Box score thresholds chosen on validation (the manifest's `suspicious`, `definite`).
    pub thresholds: eval::BoxThresholds,
    /// Validation.
    pub valid: eval::SplitMetrics,
    /// Test (the official test split).
    pub test: Option<eval::SplitMetrics>,
    /// Images that could not be loaded.
    pub load_failures: Vec<String>,
}

/// Evaluates `RUN/best.safetensors` on validation and, if asked, test; writes `metrics.json`,
/// `pr.png` and `test_grid.png` (or `valid_grid.png`).
pub fn evaluate_run(
    data: &FracAtlas,
    run: &Path,
    with_test: bool,
    device: &Device,
) -> anyhow::Result<DetectMetrics> {
    let config: DetectConfig = serde_json::from_str(
        &std::fs::read_to_string(run.join("config.json")).with_context(|| {
            format!(
                "{}: no config.json; train with `fv-train detect`",
                run.display()
            )
        })?,
    )?;
    let best = run.join("best.safetensors");
    anyhow::ensure!(
        best.is_file(),
        "{}: no checkpoint; train the run with `fv-train detect` first",
        best.display()
    );
    let model = build_detector(&config, Some(&best), device)?;
    let [_, valid_s, test_s] = split(data, &config)?;
    let (valid_in, mut failures) = eval::prepare(&valid_s, &config);
    let valid_p = eval::predict(&model, &valid_in, &config, device);
    let valid = eval::SplitMetrics::new(SplitPart::Valid, &valid_in, &valid_p)
        .with_intervals(&valid_in, &valid_p);
    let thresholds = eval::BoxThresholds::choose(&valid_in, &valid_p);
    let mut series = vec![(
        SplitPart::Valid.to_string(),
        eval::pr_points(&valid_in, &valid_p),
    )];
    let mut grid = (valid_in, valid_p, "valid_grid.png");
    let test = if with_test {
        let (test_in, f) = eval::prepare(&test_s, &config);
        failures.extend(f);
        let test_p = eval::predict(&model, &test_in, &config, device);
        let m = eval::SplitMetrics::new(SplitPart::Test, &test_in, &test_p)
            .with_intervals(&test_in, &test_p);
        series.push((
            SplitPart::Test.to_string(),
            eval::pr_points(&test_in, &test_p),
        ));
        grid = (test_in, test_p, "test_grid.png");
        Some(m)
    } else {
        None
    };
    if let Err(e) = crate::plots::curves(
        &run.join("pr.png"),
        "Precision-recall, IoU 0.5",
        ("recall", "precision"),
        &series,
        false,
    ) {
        tracing::warn!("{}: could not draw pr.png: {e}", run.display());
    }
    if let Err(e) = eval::draw_grid(&run.join(grid.2), &grid.0, &grid.1) {
        tracing::warn!("{}: could not draw {}: {e}", run.display(), grid.2);
    }
    let metrics = DetectMetrics {
        model: config.model.name().to_owned(),
        checkpoint: best.display().to_string(),
        image_size: config.image_size,
        thresholds,
        valid,
        test,
        load_failures: failures.into_iter().map(|f| f.message).collect(),
    };
    std::fs::write(
        run.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?,
    )?;
    Ok(metrics)
}

/// A short table of a run's metrics for the terminal.
pub fn summary_table(m: &DetectMetrics) -> String {
    let mut out = format!(
        "{} at {} px\nbox thresholds (validation): suspicious {:.3}, definite {:.3}\n",
        m.model,
        m.image_size,
        m.thresholds.scores.suspicious.get(),
        m.thresholds.scores.definite.get()
    );
    out += "split   images  boxes  mAP50  mAP50-95  P@0.25  R@0.25  95 % intervals (mAP50; mAP50-95)\n";
    let f = |v: Option<f64>| v.map_or("  n/a ".to_owned(), |v| format!("{v:.3}"));
    let interval =
        |i: Option<[f64; 2]>| i.map_or("n/a".to_owned(), |[l, h]| format!("{l:.3}–{h:.3}"));
    for s in std::iter::once(&m.valid).chain(m.test.as_ref()) {
        out += &format!(
            "{:<7} {:>6} {:>6}  {:.3}  {:.3}     {}   {}   {}; {}\n",
            s.split,
            s.images,
            s.boxes,
            s.map50,
            s.map50_95,
            f(s.precision),
            f(s.recall),
            interval(s.map50_interval),
            interval(s.map50_95_interval)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tensor;

    /// A detector's own checkpoint as `--weights` starts the run from all of it, neck and head
    /// included (an EfficientNet's fills the backbone only).
    #[test]
    fn a_whole_detector_checkpoint_starts_a_run_as_it_is() {
        let device = Device::flex();
        let tmp = tempfile::tempdir().unwrap();
        let config = DetectConfig::study(DetectorKind::Yolov8Effl0);
        let first = build_detector(&config, None, &device).unwrap();
        let saved = tmp.path().join("det.safetensors");
        crate::run::save_checkpoint(&first, &saved).unwrap();
        let again = DetectConfig {
            weights: Some(saved),
            ..config.clone()
        };
        let x = Tensor::<4>::ones([1, 3, 64, 64], &device);
        let scores = |m: &YoloV8| {
            m.forward(x.clone())
                .scores
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let from_saved = build_detector(&again, None, &device).unwrap();
        assert_eq!(scores(&first), scores(&from_saved));
        // From ImageNet alone the neck and head are fresh: the scores differ.
        let fresh = build_detector(&config, None, &device).unwrap();
        assert_ne!(scores(&first), scores(&fresh));
    }
}
