//! Detection as a task of the training driver ([`fit`]): AdamW with a linear warm-up and a
//! linear decay, mosaic until the last `close_mosaic` epochs, the best epoch by Ultralytics'
//! fitness on validation (0.1 · mAP50 + 0.9 · mAP50-95).

use super::assign::AssignerConfig;
use super::loss::detection_loss;
use super::{build_detector, eval, split, DetectConfig};
use crate::data::classify::LoadFailure;
use crate::data::detect::{load_cached, training_view, views_to_batch, Cached, DetSample};
use crate::data::{FracAtlas, SplitPart};
use crate::models::yolov8::YoloV8;
use crate::run::fit::{FitState, Loss, Plan, Task};
use crate::run::{fit, RunDir};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One epoch's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean loss parts (box, cls, dfl).
    pub loss: [f64; 3],
    /// Validation mAP50.
    pub valid_map50: f64,
    /// Validation mAP50-95.
    pub valid_map50_95: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// What a training run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectSummary {
    /// Best epoch (1-based) by validation fitness.
    pub best_epoch: usize,
    /// Per epoch.
    pub epochs: Vec<EpochRecord>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Images that could not be loaded.
    pub load_failures: Vec<String>,
    /// False when the run stopped at `session_step_limit` before its last epoch.
    #[serde(default = "crate::run::complete_by_default")]
    pub complete: bool,
}

fn fitness(map50: f64, map50_95: f64) -> f64 {
    0.1 * map50 + 0.9 * map50_95
}

/// The detector's training, with its data loaded.
struct Detection<'a> {
    config: &'a DetectConfig,
    pool: Vec<(DetSample, Cached)>,
    valid_inputs: Vec<eval::EvalInput>,
    failures: Vec<LoadFailure>,
    assigner: AssignerConfig,
    device: &'a Device,
}

impl Detection<'_> {
    fn summary(&self, state: &FitState<EpochRecord>, complete: bool) -> DetectSummary {
        DetectSummary {
            best_epoch: state.best_epoch,
            epochs: state.epochs.clone(),
            seconds: state.seconds,
            load_failures: self
                .failures
                .iter()
                .map(|f| format!("{}: {}", f.id, f.message))
                .collect(),
            complete,
        }
    }
}

impl Task for Detection<'_> {
    type Config = DetectConfig;
    type Model = YoloV8;
    type Epoch = EpochRecord;
    const LOSS_PARTS: &'static [&'static str] = &["box", "cls", "dfl"];
    const LOG_EXTRA: &'static [&'static str] = &["foreground"];

    fn config(&self) -> &DetectConfig {
        self.config
    }
    fn resumable(c: &DetectConfig) -> DetectConfig {
        c.resumable_part()
    }
    fn plan(&self) -> Plan {
        let c = self.config;
        Plan {
            epochs: c.epochs,
            seed: c.seed,
            checkpoint_minutes: c.checkpoint_minutes,
            step_limit: c.session_step_limit,
            log_every: 1,
            ema: c.ema,
        }
    }
    fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_weight_decay(self.config.weight_decay)
            .init()
    }
    fn init(&self, ad: &Device) -> anyhow::Result<YoloV8> {
        build_detector(self.config, None, ad)
    }
    fn blank(&self, ad: &Device) -> YoloV8 {
        self.config.model.config().init(ad)
    }
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.pool.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            self.config.seed ^ (epoch as u64 + 1),
        ));
        order
            .chunks(self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
    fn lr(&self, global: usize, per_epoch: usize, _total: usize) -> f64 {
        self.config.lr_at(global, per_epoch)
    }
    fn loss(
        &self,
        model: &YoloV8,
        epoch: usize,
        global: usize,
        batch: &[usize],
        ad: &Device,
    ) -> anyhow::Result<Loss> {
        let c = self.config;
        let s = c.image_size as usize;
        let mosaic = epoch + c.close_mosaic < c.epochs;
        // Augmentation draws from a generator seeded by the step alone.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            c.seed ^ ((global as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        let views: Vec<_> = batch
            .iter()
            .map(|&i| training_view(&self.pool, i, s, &c.augment, mosaic, &mut rng))
            .collect();
        let b = views.len();
        let (mean, std) = c.model.mean_std();
        let x = Tensor::<4>::from_data(
            TensorData::new(views_to_batch(&views, mean, std), [b, 3, s, s]),
            ad,
        );
        let gt: Vec<Vec<([f32; 4], usize)>> = views
            .iter()
            .map(|v| v.boxes.iter().map(|&bx| (bx, 0usize)).collect())
            .collect();
        let raw = model.forward(x);
        let (value, parts) = detection_loss(&raw, &gt, model.reg_max(), &c.gains, &self.assigner);
        Ok(Loss {
            value,
            parts: vec![parts.box_, parts.cls, parts.dfl],
            extra: vec![parts.foreground as f64],
            images: b,
        })
    }
    fn validate(
        &self,
        model: &YoloV8,
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
    ) -> anyhow::Result<(EpochRecord, Option<f64>)> {
        let preds = eval::predict(model, &self.valid_inputs, self.config, self.device);
        let report = eval::SplitMetrics::new(SplitPart::Valid, &self.valid_inputs, &preds);
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: [mean_loss[0], mean_loss[1], mean_loss[2]],
            valid_map50: report.map50,
            valid_map50_95: report.map50_95,
            images_per_second,
        };
        let score = fitness(rec.valid_map50, rec.valid_map50_95);
        Ok((rec, Some(score)))
    }
    fn describe(&self, r: &EpochRecord) -> String {
        format!(
            "epoch {}: loss box {:.4} cls {:.4} dfl {:.4}; valid mAP50 {:.4} mAP50-95 {:.4}",
            r.epoch, r.loss[0], r.loss[1], r.loss[2], r.valid_map50, r.valid_map50_95
        )
    }
    fn epoch_done(&self, run: &RunDir, state: &FitState<EpochRecord>) -> anyhow::Result<()> {
        let summary = self.summary(state, state.epochs_done == self.config.epochs);
        let path = run.0.join("train_summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
    }
}

/// Trains a detector into `run` through [`fit`]: `config.json`, `train_log.csv`,
/// `last.safetensors`, `best.safetensors`, `train_summary.json` after every epoch, and
/// `state.json` with its resume point; continues from `state.json` if present.
pub fn train(
    data: &FracAtlas,
    config: &DetectConfig,
    run: &Path,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<DetectSummary> {
    anyhow::ensure!(
        config.image_size.is_multiple_of(32) && config.image_size >= 64,
        "--image-size {} must be a multiple of 32, at least 64 (YOLOv8's largest stride is 32)",
        config.image_size
    );
    let [train_s, valid_s, _] = split(data, config)?;
    let (pool, mut failures) = load_cached(&train_s, config.image_size);
    anyhow::ensure!(!pool.is_empty(), "no training image could be loaded");
    let (valid_inputs, vf) = eval::prepare(&valid_s, config);
    failures.extend(vf);
    for f in &failures {
        tracing::warn!("skipped {}: {}", f.id, f.message);
    }
    let task = Detection {
        config,
        pool,
        valid_inputs,
        failures,
        assigner: AssignerConfig::default(),
        device,
    };
    let fitted = fit(&task, &RunDir(run.to_path_buf()), device, show_progress)?;
    Ok(task.summary(&fitted.state, fitted.complete))
}
