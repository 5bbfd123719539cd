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

use crate::data::classify::LoadFailure;
use crate::data::detect::{load_cached, training_view, views_to_batch, DetAugment, DetSample};
use crate::data::{ClassificationSplitConfig, FracAtlas, SplitPart};
use crate::models::yolov8::{ultralytics_key_remapping, YoloV8, YoloV8Config};
use crate::models::ModelKind;
use crate::run::{progress_bar, save_checkpoint, save_resume_point, say, Session};
use crate::weights::load_safetensors;
use anyhow::Context as _;
use assign::AssignerConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use loss::{detection_loss, LossGains};
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
}

impl DetectorKind {
    /// The name on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Yolov8n => "yolov8n",
            DetectorKind::Yolov8s => "yolov8s",
            DetectorKind::Yolov8Effl0 => "yolov8-effl0",
        }
    }

    /// The architecture.
    pub fn config(self) -> YoloV8Config {
        match self {
            DetectorKind::Yolov8n => YoloV8Config::n(),
            DetectorKind::Yolov8s => YoloV8Config::s(),
            DetectorKind::Yolov8Effl0 => YoloV8Config::effl0(),
        }
    }

    /// Input normalization: YOLOv8 reads `[0, 1]`; the EfficientNet backbone was trained
    /// on ImageNet statistics.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            DetectorKind::Yolov8Effl0 => ModelKind::EfficientnetLite0.mean_std(),
            _ => ([0.0; 3], [1.0; 3]),
        }
    }

    /// The weights used when `--weights` is not given.
    pub fn default_weights(self) -> Option<PathBuf> {
        match self {
            DetectorKind::Yolov8Effl0 => ModelKind::EfficientnetLite0.default_weights(),
            // COCO checkpoints are what users download; nothing ships here.
            _ => None,
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
            checkpoint_minutes: default_checkpoint_minutes(),
            session_step_limit: None,
        }
    }

    /// What must match for `--resume` to continue a run: all but the epoch count (a resume
    /// may extend a run), the checkpoint interval and this invocation's step limit.
    fn resumable_part(&self) -> DetectConfig {
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
            let (m, report) = match config.model {
                // ImageNet EfficientNet weights fill the backbone; neck and head start fresh.
                DetectorKind::Yolov8Effl0 => {
                    load_safetensors(model, w, &["m", "effnet.fc."], &[(r"^", "effnet.")])?
                }
                // A COCO (80-class) checkpoint: the class branch starts fresh.
                _ => load_safetensors(model, w, &["m22.cv3."], &ultralytics_key_remapping())?,
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

/// Where a run stands (`RUN/state.json`), written with every resume checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DetectState {
    epochs_done: usize,
    best_epoch: usize,
    best_fitness: Option<f64>,
    epochs: Vec<EpochRecord>,
    /// Steps done in the epoch under way.
    step_in_epoch: usize,
    /// Loss sums and steps of the epoch under way, so its means survive a resume.
    partial_loss: [f64; 3],
    partial_n: usize,
    /// Images and training seconds of the epoch under way (its images per second).
    partial_images: usize,
    partial_seconds: f64,
    /// Wall time of the run over all sessions, up to this state.
    seconds: f64,
    /// The folder (under the run) with the weights and optimizer moments of this state.
    resume_dir: Option<String>,
}

impl crate::run::ResumeState for DetectState {
    fn point_name(&self) -> String {
        format!("resume-e{:03}-s{:06}", self.epochs_done, self.step_in_epoch)
    }
    fn set_resume_dir(&mut self, name: String) {
        self.resume_dir = Some(name);
    }
}

fn fitness(map50: f64, map50_95: f64) -> f64 {
    0.1 * map50 + 0.9 * map50_95
}

/// Trains a detector into `run`: `config.json`, `train_log.csv`, `last.safetensors`,
/// `best.safetensors`, `train_summary.json`, and `state.json` with a resume checkpoint every
/// `checkpoint_minutes` and at each epoch's end; continues from `state.json` if present.
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
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let state_path = run.join("state.json");
    let mut state: DetectState = match std::fs::read_to_string(&state_path) {
        Ok(text) => {
            let saved: DetectConfig = serde_json::from_str(
                &std::fs::read_to_string(run.join("config.json"))
                    .context("resuming: reading config.json")?,
            )?;
            anyhow::ensure!(
                saved.resumable_part() == config.resumable_part(),
                "{} holds a detection run with another configuration; resume with the same flags or use a new --out",
                run.display()
            );
            serde_json::from_str(&text)
                .with_context(|| format!("resuming: reading {}", state_path.display()))?
        }
        Err(_) => DetectState::default(),
    };
    std::fs::write(
        run.join("config.json"),
        serde_json::to_string_pretty(config)?,
    )?;
    let [train_s, valid_s, _] = split(data, config)?;
    let s = config.image_size as usize;
    let (pool, mut failures) = load_cached(&train_s, config.image_size);
    anyhow::ensure!(!pool.is_empty(), "no training image could be loaded");
    let (valid_inputs, vf) = eval::prepare(&valid_s, config);
    failures.extend(vf);
    for f in &failures {
        tracing::warn!("skipped {}: {}", f.id, f.message);
    }

    let ad = device.clone().autodiff();
    let mut optim = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_weight_decay(config.weight_decay)
        .init();
    let mut model = match state.resume_dir.as_ref().map(|d| run.join(d)) {
        Some(dir) => {
            let (model, loaded) =
                crate::run::load_resume_point(&dir, config.model.config().init(&ad), optim)?;
            optim = loaded;
            tracing::info!(
                "resuming at epoch {} step {} from {}",
                state.epochs_done + 1,
                state.step_in_epoch,
                dir.display()
            );
            model
        }
        None => {
            device.seed(config.seed);
            build_detector(config, None, &ad)?
        }
    };
    let reg_max = model.reg_max();
    let assigner = AssignerConfig::default();
    let (mean, std) = config.model.mean_std();

    let log_path = run.join("train_log.csv");
    let new_log = state.resume_dir.is_none() || !log_path.exists();
    let per_epoch = pool.len().div_ceil(config.batch_size);
    if !new_log {
        // Steps logged after the resume point (a crash, or a carried pack made earlier) are
        // done again: their lines go, so that each step is logged once.
        crate::run::truncate_log_after(
            &log_path,
            per_epoch * state.epochs_done + state.step_in_epoch,
        )?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!new_log)
        .truncate(new_log)
        .open(&log_path)?;
    if new_log {
        writeln!(
            log,
            "epoch,step,lr,box,cls,dfl,foreground,images_per_second"
        )?;
    }
    let bar = progress_bar((per_epoch * config.epochs) as u64, show_progress);
    bar.set_position((per_epoch * state.epochs_done + state.step_in_epoch) as u64);
    let started = Instant::now();
    let seconds_before = state.seconds;
    let mut session = Session::new(config.checkpoint_minutes, config.session_step_limit);
    let mut stopped = false;
    let failure_messages = || -> Vec<String> {
        failures
            .iter()
            .map(|f: &LoadFailure| format!("{}: {}", f.id, f.message))
            .collect()
    };
    for epoch in state.epochs_done..config.epochs {
        bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        let mosaic = epoch + config.close_mosaic < config.epochs;
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            config.seed ^ (epoch as u64 + 1),
        ));
        let session_epoch_start = Instant::now();
        let seconds_before_epoch = state.partial_seconds;
        let ips = |state: &DetectState| {
            state.partial_images as f64
                / (seconds_before_epoch + session_epoch_start.elapsed().as_secs_f64()).max(1e-9)
        };
        for (step, batch) in order
            .chunks(config.batch_size)
            .enumerate()
            .skip(state.step_in_epoch)
        {
            let global = epoch * per_epoch + step;
            // Augmentation draws from a generator seeded by the step alone, so that a resumed
            // run repeats exactly what an uninterrupted one does.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                config.seed ^ ((global as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            );
            let views: Vec<_> = batch
                .iter()
                .map(|&i| training_view(&pool, i, s, &config.augment, mosaic, &mut rng))
                .collect();
            let b = views.len();
            let x = Tensor::<4>::from_data(
                TensorData::new(views_to_batch(&views, mean, std), [b, 3, s, s]),
                &ad,
            );
            let gt: Vec<Vec<([f32; 4], usize)>> = views
                .iter()
                .map(|v| v.boxes.iter().map(|&bx| (bx, 0usize)).collect())
                .collect();
            let raw = model.forward(x);
            let (loss, parts) = detection_loss(&raw, &gt, reg_max, &config.gains, &assigner);
            let total = parts.box_ + parts.cls + parts.dfl;
            anyhow::ensure!(
                total.is_finite(),
                "the loss became {total} at epoch {} step {}; lower --lr",
                epoch + 1,
                step + 1
            );
            let lr = config.lr_at(global, per_epoch);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            state.partial_loss[0] += parts.box_;
            state.partial_loss[1] += parts.cls;
            state.partial_loss[2] += parts.dfl;
            state.partial_n += 1;
            state.partial_images += b;
            state.step_in_epoch = step + 1;
            let n = state.partial_n as f64;
            writeln!(
                log,
                "{},{},{:.6},{:.5},{:.5},{:.5},{},{:.3}",
                epoch + 1,
                global + 1,
                lr,
                parts.box_,
                parts.cls,
                parts.dfl,
                parts.foreground,
                ips(&state)
            )?;
            bar.set_message(format!(
                "box {:.3} cls {:.3} dfl {:.3}  {:.2} img/s",
                state.partial_loss[0] / n,
                state.partial_loss[1] / n,
                state.partial_loss[2] / n,
                ips(&state)
            ));
            bar.inc(1);
            let next = session.after_step(step + 1 == per_epoch);
            if next.save {
                log.flush()?;
                state.partial_seconds =
                    seconds_before_epoch + session_epoch_start.elapsed().as_secs_f64();
                state.seconds = seconds_before + started.elapsed().as_secs_f64();
                // `valid()` folds in the batch-norm statistics of the last step.
                save_resume_point(run, &model.valid(), &optim, &mut state)?;
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
        let preds = eval::predict(&eval_model, &valid_inputs, config, device);
        let report = eval::SplitMetrics::new(SplitPart::Valid, &valid_inputs, &preds);
        let n = state.partial_n.max(1) as f64;
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: state.partial_loss.map(|l| l / n),
            valid_map50: report.map50,
            valid_map50_95: report.map50_95,
            images_per_second: ips(&state),
        };
        say(
            &bar,
            format!(
                "epoch {}: loss box {:.4} cls {:.4} dfl {:.4}; valid mAP50 {:.4} mAP50-95 {:.4}",
                rec.epoch,
                rec.loss[0],
                rec.loss[1],
                rec.loss[2],
                rec.valid_map50,
                rec.valid_map50_95
            ),
        );
        save_checkpoint(&eval_model, &run.join("last.safetensors"))?;
        let fit = fitness(rec.valid_map50, rec.valid_map50_95);
        if state.best_fitness.is_none_or(|b| fit > b) {
            state.best_fitness = Some(fit);
            state.best_epoch = epoch + 1;
            save_checkpoint(&eval_model, &run.join("best.safetensors"))?;
        }
        state.epochs.push(rec);
        state.epochs_done = epoch + 1;
        state.step_in_epoch = 0;
        state.partial_loss = [0.0; 3];
        state.partial_n = 0;
        state.partial_images = 0;
        state.partial_seconds = 0.0;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        save_resume_point(run, &eval_model, &optim, &mut state)?;
        session.saved();
        let summary = DetectSummary {
            best_epoch: state.best_epoch,
            epochs: state.epochs.clone(),
            seconds: state.seconds,
            load_failures: failure_messages(),
            complete: epoch + 1 == config.epochs,
        };
        std::fs::write(
            run.join("train_summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        if session.stops_after_epoch(epoch, config.epochs) {
            stopped = true;
            say(&bar, Session::stopped_after_epoch(epoch));
            break;
        }
    }
    bar.finish_and_clear();
    Ok(DetectSummary {
        best_epoch: state.best_epoch,
        epochs: state.epochs,
        seconds: seconds_before + started.elapsed().as_secs_f64(),
        load_failures: failure_messages(),
        complete: !stopped,
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
    let valid = eval::SplitMetrics::new(SplitPart::Valid, &valid_in, &valid_p);
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
        let m = eval::SplitMetrics::new(SplitPart::Test, &test_in, &test_p);
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
        "{} at {} px\nsplit   images  boxes  mAP50  mAP50-95  P@0.25  R@0.25\n",
        m.model, m.image_size
    );
    let f = |v: Option<f64>| v.map_or("  n/a ".to_owned(), |v| format!("{v:.3}"));
    out += &format!(
        "box thresholds (validation): suspicious {:.3}, definite {:.3}\n",
        m.thresholds.scores.suspicious.get(),
        m.thresholds.scores.definite.get()
    );
    for s in std::iter::once(&m.valid).chain(m.test.as_ref()) {
        out += &format!(
            "{:<7} {:>6} {:>6}  {:.3}  {:.3}     {}   {}\n",
            s.split,
            s.images,
            s.boxes,
            s.map50,
            s.map50_95,
            f(s.precision),
            f(s.recall)
        );
    }
    out
}
