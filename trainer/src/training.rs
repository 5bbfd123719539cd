//! The classification training loop: AdamW, class-weighted cross-entropy, validation every
//! epoch, the best epoch chosen on validation ROC-AUC, checkpoints and resume.
//!
//! Written by hand (forward, loss, backward, step) rather than with burn's `Learner`, which
//! keeps burn-train and its terminal UI out of the build.

use crate::data::classify::{batch_tensor, load_planes, Augment, Plane, Sample};
use crate::models::{Classifier, ModelKind};
use crate::weights::load_safetensors;
use anyhow::Context as _;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
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
    /// Epochs.
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
    pub ssl: crate::ssl::SslSettings,
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
            ssl: crate::ssl::SslSettings::default(),
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
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    /// The best checkpoint.
    pub fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    /// The latest checkpoint.
    pub fn last(&self) -> PathBuf {
        self.0.join("last.safetensors")
    }
    /// Progress of the run, for resume.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// The step log.
    pub fn log(&self) -> PathBuf {
        self.0.join("train_log.csv")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct RunState {
    epochs_done: usize,
    best_epoch: usize,
    best_valid_roc_auc: Option<f64>,
    epoch_loss: Vec<f64>,
    epoch_valid_roc_auc: Vec<Option<f64>>,
}

/// Saves a model in PyTorch layout, like the pretrained files, so one loader reads both.
pub fn save_checkpoint<M: Module>(model: &M, path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: cannot save checkpoint: {e}", tmp.display()))?;
    // Rename so that a crash never leaves a half-written checkpoint under the real name.
    std::fs::rename(&tmp, path).with_context(|| format!("moving checkpoint to {}", path.display()))
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
    if config.model == ModelKind::ResnetSslMlp {
        return crate::ssl::train(
            config,
            train_samples,
            valid_samples,
            run,
            device,
            show_progress,
        );
    }
    std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
    let mut state: RunState = match std::fs::read_to_string(run.state()) {
        Ok(text) => {
            let saved: TrainConfig = serde_json::from_str(
                &std::fs::read_to_string(run.config()).context("resuming: reading config.json")?,
            )?;
            // Only the epoch count may change: resuming extends a run.
            let same = |c: &TrainConfig| TrainConfig {
                epochs: 0,
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
    device.seed(config.seed);

    // Cache larger than the input so random crops keep detail.
    let s = config.image_size as usize;
    let cache = config.augment.cache_size(config.image_size);
    let (train_set, mut failures) = load_planes(train_samples, cache);
    let (valid_set, valid_failures) = load_planes(valid_samples, config.image_size);
    failures.extend(valid_failures);
    for f in &failures {
        tracing::warn!("skipped {}: {}", f.id, f.message);
    }
    anyhow::ensure!(!train_set.is_empty(), "no training image could be loaded");

    let ad = device.clone().autodiff();
    let resume = (state.epochs_done > 0).then(|| run.last());
    let mut model = build_model(config, resume.as_deref(), &ad)?;
    // Optimizer moments start afresh on resume: they are not checkpointed.
    let mut optim = AdamWConfig::new()
        .with_epsilon(config.eps)
        .with_beta_1(config.betas.0)
        .with_beta_2(config.betas.1)
        .with_weight_decay(config.weight_decay)
        .init();

    let class_w = class_weights(
        train_set.iter().map(|(s, _)| s.label),
        config.class_weighted_loss,
    );

    let new_log = !run.log().exists();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.log())?;
    if new_log {
        writeln!(log, "epoch,step,images,loss,images_per_second")?;
    }

    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    let total = (steps_per_epoch * config.epochs) as u64;
    let bar = progress_bar(total, show_progress);
    bar.set_position((steps_per_epoch * state.epochs_done) as u64);

    let started = Instant::now();
    let mut images_seen = 0usize;
    let valid_planes: Vec<&Plane> = valid_set.iter().map(|(_, p)| p).collect();
    let (mean, std) = config.model.mean_std();
    for epoch in state.epochs_done..config.epochs {
        bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ (epoch as u64 + 1));
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
        let mut window = Vec::new();
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        for (step, batch) in order.chunks(config.batch_size).enumerate() {
            let views: Vec<Plane> = batch
                .iter()
                .map(|&i| config.augment.apply(&train_set[i].1, s, &mut rng))
                .collect();
            let refs: Vec<&Plane> = views.iter().collect();
            let b = batch.len();
            let x = batch_tensor(&refs, mean, std, &ad);
            let labels: Vec<bool> = batch.iter().map(|&i| train_set[i].0.label).collect();
            let loss = weighted_ce(model.forward(x), &labels, class_w);
            let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
            anyhow::ensure!(
                loss_value.is_finite(),
                "the loss became {loss_value} at epoch {} step {}; lower --lr",
                epoch + 1,
                step + 1
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.lr, model, grads);

            loss_sum += loss_value;
            loss_n += 1;
            images_seen += b;
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
                    images_seen,
                    mean_loss,
                    ips
                )?;
                window.clear();
            }
            bar.set_message(format!(
                "loss {:.4}  {:.1} img/s",
                loss_sum / loss_n as f64,
                ips
            ));
            bar.inc(1);
        }
        log.flush()?;

        let eval_model = model.valid();
        let probs = predict(&eval_model, &valid_planes, config, device);
        let auc = auc_of(&probs, &valid_set);
        state.epoch_loss.push(loss_sum / loss_n.max(1) as f64);
        state.epoch_valid_roc_auc.push(auc);
        say(
            &bar,
            format!(
                "epoch {}: train loss {:.4}, valid ROC-AUC {}",
                epoch + 1,
                loss_sum / loss_n.max(1) as f64,
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
        std::fs::write(run.state(), serde_json::to_string_pretty(&state)?)?;
    }
    bar.finish_and_clear();
    Ok(TrainSummary {
        best_epoch: state.best_epoch,
        best_valid_roc_auc: state.best_valid_roc_auc,
        epoch_loss: state.epoch_loss,
        epoch_valid_roc_auc: state.epoch_valid_roc_auc,
        images_per_second: images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
        load_failures: failures
            .iter()
            .map(|f| format!("{}: {}", f.id, f.message))
            .collect(),
    })
}

/// The training progress bar (steps, epoch, message, ETA), or a hidden one for background runs.
pub(crate) fn progress_bar(steps: u64, show: bool) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(steps)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  epoch {prefix}  {msg}  ETA {eta}",
        )
        .expect("static template"),
    );
    bar
}

/// A line for the person watching: above the progress bar, or on stderr when it is hidden
/// (a background run's log).
pub(crate) fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
