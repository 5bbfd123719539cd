//! The classification training loop: AdamW, class-weighted cross-entropy, validation every
//! epoch, the best epoch chosen on validation ROC-AUC, checkpoints and resume.
//!
//! Written by hand (forward, loss, backward, step) rather than with burn's `Learner`, which
//! keeps burn-train and its terminal UI out of the build.

use crate::data::classify::{
    batch_tensor, load_planes, load_planes_cached, Augment, Plane, Sample,
};
use crate::models::{Classifier, ModelKind};
use crate::run::{
    load_resume_point, progress_bar, save_checkpoint, save_resume_point, say, ResumeState, RunDir,
    Session,
};
use crate::weights::load_safetensors;
use anyhow::Context as _;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use fv_core::metrics::classification::{roc_auc, Scored};
use fv_core::Probability;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Where a run stands: written after every checkpoint, read on resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunState {
    epochs_done: usize,
    best_epoch: usize,
    best_valid_roc_auc: Option<f64>,
    epoch_loss: Vec<f64>,
    epoch_valid_roc_auc: Vec<Option<f64>>,
    /// Steps done in the epoch under way.
    #[serde(default)]
    step_in_epoch: usize,
    /// Running loss of the epoch under way, so its mean survives a resume.
    #[serde(default)]
    partial_loss_sum: f64,
    #[serde(default)]
    partial_loss_n: usize,
    /// Training images seen over the whole run.
    #[serde(default)]
    images_seen: usize,
    /// The folder (under the run) with the weights and optimizer moments of this state.
    #[serde(default)]
    resume_dir: Option<String>,
}

impl ResumeState for RunState {
    fn point_name(&self) -> String {
        format!("resume-e{:03}-s{:06}", self.epochs_done, self.step_in_epoch)
    }
    fn set_resume_dir(&mut self, name: String) {
        self.resume_dir = Some(name);
    }
}

/// Builds a model for `config` on `device`, from `checkpoint` if given, otherwise from the
/// pretrained weights with a fresh head.
pub fn build_model(
    config: &TrainConfig,
    checkpoint: Option<&Path>,
    device: &Device,
) -> anyhow::Result<Classifier> {
    let model = Classifier::new(config.model, 2, device);
    Ok(match (checkpoint, &config.weights) {
        (Some(ckpt), _) => load_safetensors(model, ckpt, &[], &[])?.0,
        (None, Some(w)) => {
            let (m, report) = load_safetensors(
                model,
                w,
                config.model.fresh_head(),
                &config.model.key_remapping(),
            )?;
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

/// The probability of the `fractured` class (index 1) for each row of two-class logits.
pub(crate) fn fracture_probabilities(logits: Tensor<2>) -> Vec<Probability> {
    // An f32 tensor read as f32 cannot fail to convert.
    let v: Vec<f32> = softmax(logits, 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data");
    v.chunks(2)
        .map(|c| Probability::saturating(c[1] as f64))
        .collect()
}

/// Probabilities of a fracture for `planes`, in order, on a non-autodiff device.
pub fn predict(
    model: &Classifier,
    planes: &[&Plane],
    config: &TrainConfig,
    device: &Device,
) -> Vec<Probability> {
    let (mean, std) = config.model.mean_std();
    let mut out = Vec::with_capacity(planes.len());
    for chunk in planes.chunks(config.eval_batch_size.max(1)) {
        out.extend(fracture_probabilities(
            model.forward(batch_tensor(chunk, mean, std, device)),
        ));
    }
    out
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

/// ROC-AUC of `probs` against the labels of `samples`, in the same order.
pub(crate) fn auc_of(probs: &[Probability], samples: &[(Sample, Plane)]) -> Option<f64> {
    let scored: Vec<Scored> = probs
        .iter()
        .zip(samples)
        .map(|(p, (s, _))| Scored {
            score: *p,
            positive: s.label,
        })
        .collect();
    roc_auc(&scored)
}

/// Trains a classifier. Writes `config.json`, `train_log.csv`, `last.safetensors`,
/// `best.safetensors` and `state.json` under `run`; resumes from `state.json` if present.
pub fn train(
    config: &TrainConfig,
    train_samples: &[Sample],
    valid_samples: &[Sample],
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<TrainSummary> {
    std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
    let mut state: RunState = match std::fs::read_to_string(run.state()) {
        Ok(text) => {
            let saved: TrainConfig = serde_json::from_str(
                &std::fs::read_to_string(run.config()).context("resuming: reading config.json")?,
            )?;
            // Only the epoch count and the checkpoint interval may change: resuming extends a run.
            let same = |c: &TrainConfig| TrainConfig {
                epochs: 0,
                checkpoint_minutes: 0.0,
                session_step_limit: None,
                ..c.clone()
            };
            anyhow::ensure!(
                same(&saved) == same(config),
                "{} holds a run with another configuration; resume with the same flags or use a new --out",
                run.0.display()
            );
            serde_json::from_str(&text).context("resuming: reading state.json")?
        }
        Err(_) => RunState::default(),
    };
    std::fs::write(run.config(), serde_json::to_string_pretty(config)?)?;

    // Cache larger than the input so random crops keep detail; decoded once per run into
    // RUN/cache/, so that a resumed run starts in seconds, not minutes.
    let s = config.image_size as usize;
    let cache = config.augment.cache_size(config.image_size);
    let cache_dir = run.0.join("cache");
    let (train_set, mut failures) = load_planes_cached(train_samples, cache, &cache_dir);
    let (valid_set, valid_failures) = load_planes(valid_samples, config.image_size);
    failures.extend(valid_failures);
    for f in &failures {
        tracing::warn!("skipped {}: {}", f.id, f.message);
    }
    anyhow::ensure!(!train_set.is_empty(), "no training image could be loaded");

    let ad = device.clone().autodiff();
    let mut optim = AdamWConfig::new()
        .with_epsilon(config.eps)
        .with_beta_1(config.betas.0)
        .with_beta_2(config.betas.1)
        .with_weight_decay(config.weight_decay)
        .init();
    let mut model = match state.resume_dir.as_ref().map(|d| run.0.join(d)) {
        Some(dir) => {
            let (model, loaded) =
                load_resume_point(&dir, Classifier::new(config.model, 2, &ad), optim)?;
            optim = loaded;
            tracing::info!(
                "resuming at epoch {} step {} from {}",
                state.epochs_done + 1,
                state.step_in_epoch,
                dir.display()
            );
            model
        }
        // Runs from before resume checkpoints: weights only, optimizer moments afresh.
        None if state.epochs_done > 0 => build_model(config, Some(&run.last()), &ad)?,
        None => {
            device.seed(config.seed);
            build_model(config, None, &ad)?
        }
    };

    let labels: Vec<bool> = train_set.iter().map(|(s, _)| s.label).collect();
    let class_w = class_weights(labels.iter().copied(), config.class_weighted_loss);

    let new_log = !run.log().exists();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.log())?;
    if new_log {
        writeln!(log, "epoch,step,images,loss,images_per_second")?;
    }

    let steps_per_epoch = epoch_order(config.sampling, &labels, config.seed, 0)
        .len()
        .div_ceil(config.batch_size);
    let total = steps_per_epoch * config.epochs;
    let bar = progress_bar(total as u64, show_progress);
    bar.set_position((steps_per_epoch * state.epochs_done + state.step_in_epoch) as u64);

    let started = Instant::now();
    let mut session = Session::new(config.checkpoint_minutes, config.session_step_limit);
    let mut images_this_session = 0usize;
    let mut stopped = false;
    let valid_planes: Vec<&Plane> = valid_set.iter().map(|(_, p)| p).collect();
    let (mean, std) = config.model.mean_std();
    for epoch in state.epochs_done..config.epochs {
        bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        let order = epoch_order(config.sampling, &labels, config.seed, epoch);
        let mut window = Vec::new();
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        for (step, batch) in order
            .chunks(config.batch_size)
            .enumerate()
            .skip(state.step_in_epoch)
        {
            let global = epoch * steps_per_epoch + step;
            // Augmentation and dropout draw from generators seeded by the step alone, so
            // that a resumed run repeats exactly what an uninterrupted one does.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                config.seed ^ ((global as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            );
            ad.seed(config.seed.wrapping_add(global as u64 + 1));
            let views: Vec<Plane> = batch
                .iter()
                .map(|&i| config.augment.apply(&train_set[i].1, s, &mut rng))
                .collect();
            let refs: Vec<&Plane> = views.iter().collect();
            let b = batch.len();
            let x = batch_tensor(&refs, mean, std, &ad);
            let batch_labels: Vec<bool> = batch.iter().map(|&i| labels[i]).collect();
            let loss = weighted_ce(model.forward(x), &batch_labels, class_w);
            let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
            anyhow::ensure!(
                loss_value.is_finite(),
                "the loss became {loss_value} at epoch {} step {}; lower --lr",
                epoch + 1,
                step + 1
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = config
                .schedule
                .lr(config.lr, global, steps_per_epoch, total);
            model = optim.step(lr, model, grads);

            state.partial_loss_sum += loss_value;
            state.partial_loss_n += 1;
            state.images_seen += b;
            state.step_in_epoch = step + 1;
            images_this_session += b;
            epoch_images += b;
            window.push(loss_value);
            let ips = epoch_images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            if (step + 1) % config.log_every.max(1) == 0 || step + 1 == steps_per_epoch {
                let mean_loss = window.iter().sum::<f64>() / window.len() as f64;
                writeln!(
                    log,
                    "{},{},{},{:.6},{:.2}",
                    epoch + 1,
                    step + 1,
                    state.images_seen,
                    mean_loss,
                    ips
                )?;
                window.clear();
            }
            bar.set_message(format!(
                "loss {:.4}  {:.1} img/s  lr {lr:.2e}",
                state.partial_loss_sum / state.partial_loss_n as f64,
                ips
            ));
            bar.inc(1);
            let next = session.after_step(step + 1 == steps_per_epoch);
            if next.save {
                log.flush()?;
                // `valid()` folds in the batch-norm statistics of the last step, which a
                // running state keeps apart until it is read.
                save_resume_point(&run.0, &model.valid(), &optim, &mut state)?;
                session.saved();
            }
            if next.stop {
                stopped = true;
                break;
            }
        }
        if stopped {
            say(&bar, Session::stopped_in_epoch(epoch, state.step_in_epoch));
            break;
        }
        log.flush()?;

        let eval_model = model.valid();
        let probs = predict(&eval_model, &valid_planes, config, device);
        let auc = auc_of(&probs, &valid_set);
        let epoch_loss = state.partial_loss_sum / state.partial_loss_n.max(1) as f64;
        state.epoch_loss.push(epoch_loss);
        state.epoch_valid_roc_auc.push(auc);
        say(
            &bar,
            format!(
                "epoch {}: train loss {:.4}, valid ROC-AUC {}",
                epoch + 1,
                epoch_loss,
                auc.map_or("n/a".into(), |a| format!("{a:.4}"))
            ),
        );
        save_checkpoint(&eval_model, &run.last())?;
        let better = match (auc, state.best_valid_roc_auc) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            (None, _) => state.best_epoch == 0,
        };
        if better {
            state.best_epoch = epoch + 1;
            state.best_valid_roc_auc = auc;
            save_checkpoint(&eval_model, &run.best())?;
        }
        state.epochs_done = epoch + 1;
        state.step_in_epoch = 0;
        state.partial_loss_sum = 0.0;
        state.partial_loss_n = 0;
        save_resume_point(&run.0, &eval_model, &optim, &mut state)?;
        session.saved();
        if session.stops_after_epoch(epoch, config.epochs) {
            stopped = true;
            say(&bar, Session::stopped_after_epoch(epoch));
            break;
        }
    }
    bar.finish_and_clear();
    Ok(TrainSummary {
        best_epoch: state.best_epoch,
        best_valid_roc_auc: state.best_valid_roc_auc,
        epoch_loss: state.epoch_loss,
        epoch_valid_roc_auc: state.epoch_valid_roc_auc,
        images_per_second: images_this_session as f64 / started.elapsed().as_secs_f64().max(1e-9),
        load_failures: failures
            .iter()
            .map(|f| format!("{}: {}", f.id, f.message))
            .collect(),
        complete: !stopped,
    })
}
