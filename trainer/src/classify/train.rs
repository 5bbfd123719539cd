//! Supervised classification as a task of the training driver ([`fit`]): AdamW,
//! class-weighted cross-entropy, validation ROC-AUC every epoch (the best epoch's measure).
//!
//! Written by hand (forward, loss, backward, step) rather than with burn's `Learner`, which
//! keeps burn-train and its terminal UI out of the build.

use super::eval::{auc_of, predict};
use crate::data::classify::{
    batch_tensor, load_planes, load_planes_cached, Augment, LoadFailure, Plane, Sample, View,
};
use crate::models::{Classifier, ModelKind};
use crate::run::fit::{Fitted, Loss, Plan, Task};
use crate::run::{fit, RunDir};
use crate::weights::load_safetensors;
use anyhow::Context as _;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The self-supervised stage and the MLP's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SslSettings {
    /// SimCLR epochs over the training images.
    pub epochs: usize,
    /// Images per SimCLR batch (each gives two views).
    pub batch_size: usize,
    /// SimCLR learning rate (Adam).
    pub lr: f64,
    /// NT-Xent temperature.
    pub temperature: f64,
    /// SimCLR augmentation: stronger crops than supervised training.
    pub augment: Augment,
    /// L2 penalty of the MLP (the study: 0.01).
    pub mlp_l2: f32,
    /// Non-fractured training images given to the MLP (the study: the first 1000).
    pub max_non_fractured: usize,
}

impl Default for SslSettings {
    fn default() -> Self {
        SslSettings {
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            temperature: 0.5,
            augment: Augment {
                min_crop: 0.5,
                max_rotation_deg: 15.0,
                flip: 0.5,
                photometric: None,
            },
            mlp_l2: 0.01,
            max_non_fractured: 1000,
        }
    }
}

/// Everything that defines a classification run. Saved as `RUN/config.json` before the
/// first step; `eval` and resume rebuild the model from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Architecture.
    pub model: ModelKind,
    /// Pretrained weights (safetensors), if any.
    pub weights: Option<PathBuf>,
    /// Input side in pixels.
    pub image_size: u32,
    /// Epochs to train in all (a resumed run may raise it).
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW epsilon.
    pub eps: f32,
    /// AdamW betas.
    pub betas: (f32, f32),
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Weight each class's loss by the inverse of its training frequency.
    pub class_weighted_loss: bool,
    /// Training augmentation.
    pub augment: Augment,
    /// Training images whose long side exceeds this are resampled to it before anything
    /// else, so that no training image is at a scale that validation, test and the other
    /// training images never show (none in runs that do not say).
    #[serde(default)]
    pub long_side: Option<u32>,
    /// The weight of box supervision against the image's loss ([`box_loss`]); none in runs
    /// that do not say.
    #[serde(default)]
    pub box_weight: Option<f32>,
    /// Decay per step of the moving average of the weights that is validated and saved in
    /// their place; none in runs that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// Seed for initialization, shuffling and augmentation.
    pub seed: u64,
    /// Log the running loss every this many steps.
    pub log_every: usize,
    /// The self-supervised stage (`resnet-ssl-mlp` only).
    #[serde(default)]
    pub ssl: SslSettings,
    /// How the learning rate moves over the run (`constant` for runs that do not say).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Which images make up an epoch (`shuffle` for runs that do not say).
    #[serde(default)]
    pub sampling: Sampling,
    /// Minutes between mid-epoch resume checkpoints (one is also written at each epoch's end).
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    /// Stop (after a checkpoint) once this invocation has taken this many steps: a limit of
    /// the session, not of the run, so it is never saved.
    #[serde(skip)]
    pub session_step_limit: Option<usize>,
}

fn default_checkpoint_minutes() -> f64 {
    10.0
}

/// The learning rate over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LrSchedule {
    /// `lr` throughout (the study's).
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_epochs`, then a half cosine down to
    /// `final_fraction · lr` at the last configured epoch.
    WarmupCosine {
        /// Warm-up length in epochs (may be fractional).
        warmup_epochs: f64,
        /// The rate at the end, as a fraction of `lr`.
        final_fraction: f64,
    },
}

impl LrSchedule {
    /// The rate for 0-based step `step` of `total` steps.
    pub fn lr(&self, base: f64, step: usize, steps_per_epoch: usize, total: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::WarmupCosine {
                warmup_epochs,
                final_fraction,
            } => {
                let warm = (warmup_epochs * steps_per_epoch as f64).round() as usize;
                if step < warm {
                    return base * (step + 1) as f64 / warm as f64;
                }
                let span = total.saturating_sub(warm).max(1) as f64;
                let t = ((step - warm) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                base * (final_fraction + (1.0 - final_fraction) * cos)
            }
        }
    }
}

/// Which training images an epoch visits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Every training image once, shuffled.
    #[default]
    Shuffle,
    /// Every fractured image once and as many non-fractured ones, taken in turn from a
    /// seeded stream of permutations, so that all negatives are seen over successive epochs
    /// while each batch is balanced (the loss is then unweighted).
    Balanced,
}

/// The images of epoch `epoch` (0-based), in order: a pure function of the seed and the
/// epoch, so a resumed run visits exactly what an uninterrupted one would.
pub fn epoch_order(sampling: Sampling, labels: &[bool], seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1));
    let mut order: Vec<usize> = match sampling {
        Sampling::Shuffle => (0..labels.len()).collect(),
        Sampling::Balanced => {
            let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
            let neg: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
            if neg.is_empty() || pos.is_empty() {
                (0..labels.len()).collect()
            } else {
                // Negatives for epoch e are items [e·P, (e+1)·P) of the stream of
                // permutations perm_0, perm_1, … of all negatives.
                let perm = |k: usize| {
                    let mut p = neg.clone();
                    p.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64 + 1),
                    ));
                    p
                };
                let (start, n) = (epoch * pos.len(), pos.len());
                let mut chosen = Vec::with_capacity(2 * n);
                chosen.extend(&pos);
                let mut k = start / neg.len();
                let mut cur = perm(k);
                for j in start..start + n {
                    if j / neg.len() != k {
                        k = j / neg.len();
                        cur = perm(k);
                    }
                    chosen.push(cur[j % neg.len()]);
                }
                chosen
            }
        }
    };
    order.shuffle(&mut rng);
    order
}

impl TrainConfig {
    /// The study's hyperparameters for `model`: AdamW lr 2e-5, eps 1e-8, betas 0.9/0.999,
    /// weight decay 0.01, batch 16, eval batch 32, 5 epochs.
    ///
    /// `resnet-ssl-mlp` trains its MLP on frozen embeddings: 100 epochs at lr 1e-3 there.
    pub fn study(model: ModelKind) -> Self {
        let ssl_mlp = model == ModelKind::ResnetSslMlp;
        TrainConfig {
            model,
            weights: model.default_weights(),
            image_size: 224,
            epochs: if ssl_mlp { 100 } else { 5 },
            batch_size: if ssl_mlp { 64 } else { 16 },
            eval_batch_size: 32,
            lr: if ssl_mlp { 1e-3 } else { 2e-5 },
            eps: 1e-8,
            betas: (0.9, 0.999),
            weight_decay: 0.01,
            class_weighted_loss: true,
            augment: Augment::default(),
            long_side: None,
            box_weight: None,
            ema: None,
            seed: 42,
            log_every: 10,
            ssl: SslSettings::default(),
            schedule: LrSchedule::Constant,
            sampling: Sampling::Shuffle,
            checkpoint_minutes: default_checkpoint_minutes(),
            session_step_limit: None,
        }
    }

    /// The input spec the model is served with (the manifest's `input`).
    pub fn input_spec(&self) -> fv_core::preprocess::InputSpec {
        let (mean, std) = self.model.mean_std();
        fv_core::preprocess::InputSpec {
            mean: mean.to_vec(),
            std: std.to_vec(),
            ..fv_core::preprocess::InputSpec::imagenet(
                self.image_size,
                self.image_size,
                fv_core::preprocess::ResizeMode::Stretch,
            )
        }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Epoch (1-based) whose checkpoint is kept as best.
    pub best_epoch: usize,
    /// Its validation ROC-AUC.
    pub best_valid_roc_auc: Option<f64>,
    /// Mean training loss per epoch.
    pub epoch_loss: Vec<f64>,
    /// Validation ROC-AUC per epoch.
    pub epoch_valid_roc_auc: Vec<Option<f64>>,
    /// Training images per second, over the whole run.
    pub images_per_second: f64,
    /// Images that could not be loaded, with reasons.
    pub load_failures: Vec<String>,
    /// Whether every configured epoch is done (false: stopped at the session's step limit).
    #[serde(default = "crate::run::complete_by_default")]
    pub complete: bool,
}

/// Builds a model for `config` on `device`, from `checkpoint` if given (without a cell head:
/// what is evaluated and exported), otherwise from the pretrained weights with a fresh head
/// (and a fresh cell head when the run is box-supervised).
pub fn build_model(
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    device: &Device,
) -> anyhow::Result<Classifier> {
    let model = match (checkpoint, config.box_weight) {
        (None, Some(_)) => Classifier::with_cell_head(config.model, device)?,
        _ => Classifier::new(config.model, 2, device),
    };
    Ok(match (checkpoint, &config.weights) {
        (Some(ckpt), _) => load_safetensors(model, ckpt, &[], &[])?.0,
        (None, Some(w)) => {
            let fresh: Vec<&str> = config
                .model
                .fresh_head()
                .iter()
                .copied()
                .chain(["cells."])
                .collect();
            let (m, report) = load_safetensors(model, w, &fresh, &config.model.key_remapping())?;
            tracing::info!(
                "loaded {} tensors from {}; fresh: {:?}",
                report.applied,
                w.display(),
                report.kept_fresh
            );
            m
        }
        (None, None) => model,
    })
}

/// Per-class loss weights `[not fractured, fractured]`: inverse training frequency,
/// normalized so that a balanced set gets 1 and 1; or 1 and 1 when not `weighted`.
pub fn class_weights(labels: impl Iterator<Item = bool>, weighted: bool) -> [f32; 2] {
    let (mut pos, mut neg) = (0usize, 0usize);
    for l in labels {
        if l {
            pos += 1
        } else {
            neg += 1
        }
    }
    let (p, n) = (pos.max(1) as f32, neg.max(1) as f32);
    if weighted {
        [(p + n) / (2.0 * n), (p + n) / (2.0 * p)]
    } else {
        [1.0, 1.0]
    }
}

/// Class-weighted cross-entropy of `logits` against `labels`:
/// `Σ wᵢ·(−log pᵢ[yᵢ]) / Σ wᵢ` with `wᵢ = class_w[yᵢ]`.
pub fn weighted_ce(logits: Tensor<2>, labels: &[bool], class_w: [f32; 2]) -> Tensor<1> {
    let device = logits.device();
    let b = labels.len();
    let onehot: Vec<f32> = labels
        .iter()
        .flat_map(|&y| if y { [0.0, 1.0] } else { [1.0, 0.0] })
        .collect();
    let w: Vec<f32> = labels.iter().map(|&y| class_w[y as usize]).collect();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, 2]), &device);
    let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
    let nll = -(log_softmax(logits, 1) * onehot)
        .sum_dim(1)
        .squeeze_dim::<1>(1);
    (nll * w.clone()).sum() / w.sum()
}

/// Box supervision's loss: binary cross-entropy of each cell's logit (`[batch, 1, g, g]`)
/// against its target (`None`: an image whose cells are not known), with the covered and
/// the uncovered cells of the batch weighted half each, since a fracture covers one or two
/// cells of a hundred.
pub fn box_loss(cells: Tensor<4>, targets: &[Option<Vec<f32>>]) -> Tensor<1> {
    let device = cells.device();
    let [b, _, h, w] = cells.dims();
    let n = h * w;
    let (pos, neg) = targets
        .iter()
        .flatten()
        .flatten()
        .fold(
            (0, 0),
            |(p, q), &t| {
                if t > 0.5 {
                    (p + 1, q)
                } else {
                    (p, q + 1)
                }
            },
        );
    let (wp, wn) = match (pos, neg) {
        (0, 0) => (0.0, 0.0),
        (0, q) => (0.0, 1.0 / q as f32),
        (p, 0) => (1.0 / p as f32, 0.0),
        (p, q) => (0.5 / p as f32, 0.5 / q as f32),
    };
    let mut y = Vec::with_capacity(b * n);
    let mut weight = Vec::with_capacity(b * n);
    for t in targets {
        match t {
            Some(t) => {
                y.extend_from_slice(t);
                weight.extend(t.iter().map(|&v| if v > 0.5 { wp } else { wn }));
            }
            None => {
                y.extend(std::iter::repeat_n(0.0, n));
                weight.extend(std::iter::repeat_n(0.0, n));
            }
        }
    }
    let y = Tensor::<2>::from_data(TensorData::new(y, [b, n]), &device);
    let weight = Tensor::<2>::from_data(TensorData::new(weight, [b, n]), &device);
    let z = cells.reshape([b, n]);
    // −[y·log σ(z) + (1 − y)·log σ(−z)]
    let bce = -(log_sigmoid(z.clone()) * y.clone() + log_sigmoid(-z) * (-y + 1.0));
    (bce * weight).sum()
}

/// One finished epoch of a classification run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyEpoch {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Validation ROC-AUC (`None` without both classes).
    pub valid_roc_auc: Option<f64>,
    /// Training images per second.
    pub images_per_second: f64,
}

impl ClassifyEpoch {
    /// The record of epoch `epoch` (0-based) whose validation gave `probs` for `valid`,
    /// with its score (the ROC-AUC) for [`Task::validate`].
    pub(crate) fn scored(
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
        probs: &[fv_core::Probability],
        valid: &[(Sample, Plane)],
    ) -> (Self, Option<f64>) {
        let auc = auc_of(probs, valid);
        let record = ClassifyEpoch {
            epoch: epoch + 1,
            loss: mean_loss[0],
            valid_roc_auc: auc,
            images_per_second,
        };
        (record, auc)
    }

    /// The line after the epoch, `stage` naming what trained.
    pub(crate) fn describe(&self, stage: &str) -> String {
        format!(
            "{stage} epoch {}: train loss {:.4}, valid ROC-AUC {}",
            self.epoch,
            self.loss,
            self.valid_roc_auc
                .map_or("n/a".into(), |a| format!("{a:.4}"))
        )
    }
}

impl TrainSummary {
    /// The summary of a fitted run, with the images that could not be loaded.
    pub(crate) fn of(fitted: &Fitted<ClassifyEpoch>, failures: &[LoadFailure]) -> Self {
        let s = &fitted.state;
        TrainSummary {
            best_epoch: s.best_epoch,
            best_valid_roc_auc: s.best_score,
            epoch_loss: s.epochs.iter().map(|e| e.loss).collect(),
            epoch_valid_roc_auc: s.epochs.iter().map(|e| e.valid_roc_auc).collect(),
            images_per_second: fitted.images_per_second,
            load_failures: failures
                .iter()
                .map(|f| format!("{}: {}", f.id, f.message))
                .collect(),
            complete: fitted.complete,
        }
    }
}

/// Supervised classification as a [`Task`] of the training driver.
struct Classification<'a> {
    config: &'a TrainConfig,
    train_set: Vec<(Sample, Plane)>,
    labels: Vec<bool>,
    valid_set: Vec<(Sample, Plane)>,
    class_w: [f32; 2],
    device: &'a Device,
}

impl Task for Classification<'_> {
    type Config = TrainConfig;
    type Model = Classifier;
    type Epoch = ClassifyEpoch;
    const LOSS_PARTS: &'static [&'static str] = &["loss"];

    fn config(&self) -> &TrainConfig {
        self.config
    }
    fn resumable(c: &TrainConfig) -> TrainConfig {
        TrainConfig {
            epochs: 0,
            checkpoint_minutes: 0.0,
            session_step_limit: None,
            ..c.clone()
        }
    }
    fn plan(&self) -> Plan {
        let c = self.config;
        Plan {
            epochs: c.epochs,
            seed: c.seed,
            checkpoint_minutes: c.checkpoint_minutes,
            step_limit: c.session_step_limit,
            log_every: c.log_every,
            ema: c.ema,
        }
    }
    fn optimizer(&self) -> ModuleOptimizer {
        let c = self.config;
        AdamWConfig::new()
            .with_epsilon(c.eps)
            .with_beta_1(c.betas.0)
            .with_beta_2(c.betas.1)
            .with_weight_decay(c.weight_decay)
            .init()
    }
    fn init(&self, ad: &Device) -> anyhow::Result<Classifier> {
        build_model(self.config, None, ad)
    }
    fn blank(&self, ad: &Device) -> Classifier {
        match self.config.box_weight {
            Some(_) => Classifier::with_cell_head(self.config.model, ad)
                .expect("checked when the model was first built"),
            None => Classifier::new(self.config.model, 2, ad),
        }
    }
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let c = self.config;
        epoch_order(c.sampling, &self.labels, c.seed, epoch)
            .chunks(c.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
    fn lr(&self, global: usize, per_epoch: usize, total: usize) -> f64 {
        self.config
            .schedule
            .lr(self.config.lr, global, per_epoch, total)
    }
    fn loss(
        &self,
        model: &Classifier,
        _epoch: usize,
        global: usize,
        batch: &[usize],
        ad: &Device,
    ) -> anyhow::Result<Loss> {
        let c = self.config;
        // Augmentation and dropout draw from generators seeded by the step alone.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            c.seed ^ ((global as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        ad.seed(c.seed.wrapping_add(global as u64 + 1));
        let s = c.image_size as usize;
        let (views, geometry): (Vec<Plane>, Vec<View>) = batch
            .iter()
            .map(|&i| c.augment.view(&self.train_set[i].1, s, &mut rng))
            .unzip();
        let refs: Vec<&Plane> = views.iter().collect();
        let (mean, std) = c.model.mean_std();
        let x = batch_tensor(&refs, mean, std, ad);
        let labels: Vec<bool> = batch.iter().map(|&i| self.labels[i]).collect();
        let value = match c.box_weight {
            None => weighted_ce(model.forward(x), &labels, self.class_w),
            Some(w) => {
                let (logits, cells) = model.forward_with_cells(x);
                let cells = cells.context("box supervision needs the model's cell head")?;
                let grid = cells.dims()[2];
                let targets: Vec<Option<Vec<f32>>> = batch
                    .iter()
                    .zip(&geometry)
                    .map(|(&i, g)| {
                        let sample = &self.train_set[i].0;
                        // A fractured image without boxes says nothing of its cells.
                        match (sample.label, sample.boxes.is_empty()) {
                            (true, true) => None,
                            _ => Some(g.cells(&sample.boxes, grid)),
                        }
                    })
                    .collect();
                weighted_ce(logits, &labels, self.class_w) + box_loss(cells, &targets) * w
            }
        };
        Ok(Loss::single(value, batch.len()))
    }
    fn validate(
        &self,
        model: &Classifier,
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
    ) -> anyhow::Result<(ClassifyEpoch, Option<f64>)> {
        let planes: Vec<&Plane> = self.valid_set.iter().map(|(_, p)| p).collect();
        let probs = predict(model, &planes, self.config, self.device);
        Ok(ClassifyEpoch::scored(
            epoch,
            mean_loss,
            images_per_second,
            &probs,
            &self.valid_set,
        ))
    }
    fn describe(&self, e: &ClassifyEpoch) -> String {
        e.describe("classifier")
    }
}

/// Trains a classifier through [`fit`]: `config.json`, `train_log.csv`, `last.safetensors`,
/// `best.safetensors` (the best validation ROC-AUC) and `state.json` under `run`; resumes
/// from `state.json` if present.
pub fn train(
    config: &TrainConfig,
    train_samples: &[Sample],
    valid_samples: &[Sample],
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<TrainSummary> {
    // Cache larger than the input so random crops keep detail; decoded once per run into
    // RUN/cache/, so that a resumed run starts in seconds, not minutes.
    let cache = config.augment.cache_size(config.image_size);
    let (train_set, mut failures) =
        load_planes_cached(train_samples, cache, config.long_side, &run.0.join("cache"));
    let (valid_set, valid_failures) = load_planes(valid_samples, config.image_size);
    failures.extend(valid_failures);
    for f in &failures {
        tracing::warn!("skipped {}: {}", f.id, f.message);
    }
    anyhow::ensure!(!train_set.is_empty(), "no training image could be loaded");
    let labels: Vec<bool> = train_set.iter().map(|(s, _)| s.label).collect();
    let task = Classification {
        config,
        class_w: class_weights(labels.iter().copied(), config.class_weighted_loss),
        labels,
        train_set,
        valid_set,
        device,
    };
    let fitted = fit(&task, run, device, show_progress)?;
    Ok(TrainSummary::of(&fitted, &failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(values: &[f32]) -> Tensor<4> {
        let n = values.len();
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, 1, 1, n]),
            &Device::flex(),
        )
    }

    fn value(t: Tensor<1>) -> f32 {
        t.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn box_loss_weighs_covered_and_uncovered_cells_alike() {
        // One covered cell among three: each side carries half the loss.
        let t = vec![Some(vec![1.0, 0.0, 0.0])];
        let right = value(box_loss(cells(&[4.0, -4.0, -4.0]), &t));
        let wrong_pos = value(box_loss(cells(&[-4.0, -4.0, -4.0]), &t));
        let wrong_neg = value(box_loss(cells(&[4.0, 4.0, 4.0]), &t));
        let softplus = |x: f32| (1.0 + x.exp()).ln();
        assert!((right - softplus(-4.0)).abs() < 1e-5, "{right}");
        // Missing the one covered cell costs as much as flagging both uncovered ones.
        assert!(
            (wrong_pos - wrong_neg).abs() < 1e-4,
            "{wrong_pos} {wrong_neg}"
        );
        assert!((wrong_pos - 0.5 * (softplus(4.0) + softplus(-4.0))).abs() < 1e-4);
        // An image whose cells are unknown adds nothing.
        assert_eq!(value(box_loss(cells(&[9.0, 9.0, 9.0]), &[None])), 0.0);
    }
}
