//! `fit`: the one training loop. Every task (the classifier, the detector, the two stages of
//! SSL pretraining) is a [`Task`]; the driver owns what they share: epochs and steps, the
//! session's clock and step limit, resume points and exact resume, the step log, `last` and
//! `best` checkpoints with the best epoch by the task's own score, progress and the lines a
//! background run's log shows.

use super::ema::Ema;
use super::{
    load_average, load_resume_point, progress_bar, save_checkpoint, save_resume_point, say,
    truncate_log_after, ResumeState, RunDir, Session,
};
use anyhow::Context as _;
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::time::Instant;

/// How long a run is and how this session of it behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Epochs in all (a resumed run may raise it).
    pub epochs: usize,
    /// Seeds the initial weights of a new run.
    pub seed: u64,
    /// Minutes between resume points inside an epoch (each epoch's end also saves one).
    pub checkpoint_minutes: f64,
    /// Stop after this many steps in this invocation, with a resume point.
    pub step_limit: Option<usize>,
    /// Write a line of the step log every this many steps (the window's mean).
    pub log_every: usize,
    /// Keep a moving average of the weights with this decay per step, and validate and save
    /// it (`last`, `best`) in their place; none: the weights themselves.
    pub ema: Option<f64>,
}

/// One step's loss.
pub struct Loss {
    /// What is differentiated.
    pub value: Tensor<1>,
    /// Its parts as numbers (summed, they are the loss; one part for a plain loss), in the
    /// order of [`Task::LOSS_PARTS`].
    pub parts: Vec<f64>,
    /// Further numbers for the step log, in the order of [`Task::LOG_EXTRA`].
    pub extra: Vec<f64>,
    /// Images in the step.
    pub images: usize,
}

impl Loss {
    /// A loss of one part, over `images` images.
    pub fn single(value: Tensor<1>, images: usize) -> Self {
        let v = value.clone().into_scalar::<f32>() as f64;
        Loss {
            value,
            parts: vec![v],
            extra: Vec::new(),
            images,
        }
    }
}

/// What a task tells the driver: its model, data, step and validation. It holds its data,
/// loaded before [`fit`] is called.
pub trait Task {
    /// What the run's `config.json` holds.
    type Config: Serialize + DeserializeOwned + PartialEq;
    /// The network trained.
    type Model: Module;
    /// What the run records for each finished epoch (`state.json`, the summary).
    type Epoch: Serialize + DeserializeOwned + Clone;

    /// Names of the loss parts: the step log's columns and the progress line.
    const LOSS_PARTS: &'static [&'static str];
    /// Further step-log columns.
    const LOG_EXTRA: &'static [&'static str] = &[];

    /// The run's configuration.
    fn config(&self) -> &Self::Config;
    /// The configuration with what a resume may change (epochs, the checkpoint interval,
    /// the session's limit) set to fixed values: a resume must agree on the rest.
    fn resumable(config: &Self::Config) -> Self::Config;
    /// Epochs, seed and this session's limits.
    fn plan(&self) -> Plan;
    /// A fresh optimizer.
    fn optimizer(&self) -> ModuleOptimizer;
    /// The model a new run starts from, on the autodiff device `ad`.
    fn init(&self, ad: &Device) -> anyhow::Result<Self::Model>;
    /// A model of the run's shape for a resume point to fill.
    fn blank(&self, ad: &Device) -> Self::Model;
    /// The batches of epoch `epoch` (0-based) as indices into the task's items: a pure
    /// function of the seed and the epoch, so a resumed run visits what an uninterrupted
    /// one does. Every epoch has as many.
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>>;
    /// The learning rate at 0-based step `global` of `total` (`per_epoch` an epoch).
    fn lr(&self, global: usize, per_epoch: usize, total: usize) -> f64;
    /// The loss of `batch` at 0-based step `global` of epoch `epoch`. Random draws are keyed
    /// by `global`, never by the order of calls, for exact resume.
    fn loss(
        &self,
        model: &Self::Model,
        epoch: usize,
        global: usize,
        batch: &[usize],
        ad: &Device,
    ) -> anyhow::Result<Loss>;
    /// Validates the model after epoch `epoch` (0-based): its record and its score, higher
    /// is better (`None` when it cannot be measured).
    fn validate(
        &self,
        model: &Self::Model,
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
    ) -> anyhow::Result<(Self::Epoch, Option<f64>)>;
    /// The line a person reads after an epoch.
    fn describe(&self, epoch: &Self::Epoch) -> String;
    /// After each epoch's resume point (a task's running summary, say).
    fn epoch_done(&self, _run: &RunDir, _state: &FitState<Self::Epoch>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where a run stands (`RUN/state.json`), written with every resume point, read on resume.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "E: Serialize + DeserializeOwned")]
pub struct FitState<E> {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The best epoch (1-based) by the task's score; 0 before the first.
    pub best_epoch: usize,
    /// Its score (`best_fitness`: the detector's name for it before `fit`).
    #[serde(alias = "best_fitness", default)]
    pub best_score: Option<f64>,
    /// The finished epochs' records.
    #[serde(default = "Vec::new")]
    pub epochs: Vec<E>,
    /// Steps done in the epoch under way.
    #[serde(default)]
    pub step_in_epoch: usize,
    /// Loss part sums of the epoch under way, so its means survive a resume.
    #[serde(default)]
    pub partial_loss: Vec<f64>,
    /// Steps summed in `partial_loss`.
    #[serde(default)]
    pub partial_n: usize,
    /// Images and training seconds of the epoch under way (its images per second).
    #[serde(default)]
    pub partial_images: usize,
    #[serde(default)]
    pub partial_seconds: f64,
    /// Wall time of the run over all sessions, up to this state.
    #[serde(default)]
    pub seconds: f64,
    /// The folder (under the run) with this state's weights and optimizer moments.
    #[serde(default)]
    pub resume_dir: Option<String>,
}

impl<E> Default for FitState<E> {
    fn default() -> Self {
        FitState {
            epochs_done: 0,
            best_epoch: 0,
            best_score: None,
            epochs: Vec::new(),
            step_in_epoch: 0,
            partial_loss: Vec::new(),
            partial_n: 0,
            partial_images: 0,
            partial_seconds: 0.0,
            seconds: 0.0,
            resume_dir: None,
        }
    }
}

impl<E> FitState<E> {
    /// Whether the state stands at the end of its best epoch: the best checkpoint is then the
    /// resume point's own evaluated weights.
    pub fn at_best_epoch_end(&self) -> bool {
        self.best_epoch > 0 && self.best_epoch == self.epochs_done && self.step_in_epoch == 0
    }
}

impl<E: Serialize + DeserializeOwned> ResumeState for FitState<E> {
    fn point_name(&self) -> String {
        format!("resume-e{:03}-s{:06}", self.epochs_done, self.step_in_epoch)
    }
    fn set_resume_dir(&mut self, name: String) {
        self.resume_dir = Some(name);
    }
}

/// What [`fit`] leaves: the run's state, and whether it finished.
pub struct Fitted<E> {
    /// The state after the session (every finished epoch's record, the best epoch).
    pub state: FitState<E>,
    /// Every configured epoch is done (false: stopped at the session's step limit).
    pub complete: bool,
    /// Training images per second in this session.
    pub images_per_second: f64,
}

/// Whether an epoch's `score` beats the run's `best` so far: a measured score beats none, and
/// with nothing measured the latest epoch is the best.
fn better(score: Option<f64>, best: Option<f64>) -> bool {
    match (score, best) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) | (None, None) => true,
        (None, Some(_)) => false,
    }
}

/// Trains `task` into `run`: `config.json`, `state.json` and its resume point,
/// `train_log.csv`, `last.safetensors` and `best.safetensors`; continues from `state.json` if
/// the run has one.
pub fn fit<T: Task>(
    task: &T,
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<Fitted<T::Epoch>> {
    let plan = task.plan();
    std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
    let mut state: FitState<T::Epoch> = match std::fs::read_to_string(run.state()) {
        Ok(text) => {
            let path = run.config();
            let saved: T::Config = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("resuming: {}: cannot read", path.display()))?,
            )
            .with_context(|| format!("resuming: {}", path.display()))?;
            anyhow::ensure!(
                T::resumable(&saved) == T::resumable(task.config()),
                "{} holds a run with another configuration; resume with the same flags or use a new --out",
                run.0.display()
            );
            let state: FitState<T::Epoch> = serde_json::from_str(&text)
                .with_context(|| format!("resuming: {}", run.state().display()))?;
            anyhow::ensure!(
                state.epochs.len() == state.epochs_done,
                "{}: {} epochs done but {} recorded: written by an older fv-train; train into a new --out",
                run.state().display(),
                state.epochs_done,
                state.epochs.len()
            );
            state
        }
        Err(_) => FitState::default(),
    };
    std::fs::write(run.config(), serde_json::to_string_pretty(task.config())?)
        .with_context(|| format!("{}: cannot write", run.config().display()))?;
    let parts = T::LOSS_PARTS.len();
    if state.partial_loss.len() != parts {
        state.partial_loss = vec![0.0; parts];
    }

    let ad = device.clone().autodiff();
    let mut optim = task.optimizer();
    let point = state.resume_dir.as_ref().map(|d| run.0.join(d));
    let mut model = match &point {
        Some(dir) => {
            let (model, loaded) = load_resume_point(dir, task.blank(&ad), optim)?;
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
            anyhow::ensure!(
                state.epochs_done == 0,
                "{}: epochs are done but no resume point is named; train into a new --out",
                run.state().display()
            );
            device.seed(plan.seed);
            task.init(&ad)?
        }
    };

    let per_epoch = task.batches(0).len();
    anyhow::ensure!(per_epoch > 0, "an epoch has no batch: no training item");
    let total = per_epoch * plan.epochs;
    let mut ema = match plan.ema {
        Some(decay) => {
            anyhow::ensure!(
                (0.0..1.0).contains(&decay),
                "the weights' average decays by {decay} a step; give a value in [0, 1), e.g. 0.999"
            );
            let kept = match &point {
                Some(dir) => load_average(dir, task.blank(&ad).valid())?,
                None => None,
            };
            let done = (per_epoch * state.epochs_done + state.step_in_epoch) as u64;
            Some(Ema::new(kept.unwrap_or_else(|| model.valid()), decay, done))
        }
        None => None,
    };
    let new_log = state.resume_dir.is_none() || !run.log().exists();
    if !new_log {
        // Steps logged after the resume point (a crash, or a carried pack made earlier) are
        // done again: their lines go, so that each step is logged once.
        truncate_log_after(
            &run.log(),
            per_epoch * state.epochs_done + state.step_in_epoch,
        )?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!new_log)
        .truncate(new_log)
        .open(run.log())
        .with_context(|| format!("{}: cannot open", run.log().display()))?;
    if new_log {
        let columns: Vec<&str> = ["epoch", "step", "lr"]
            .into_iter()
            .chain(T::LOSS_PARTS.iter().copied())
            .chain(T::LOG_EXTRA.iter().copied())
            .chain(["images_per_second"])
            .collect();
        writeln!(log, "{}", columns.join(","))?;
    }

    // A carried pack leaves out the best checkpoint when it is this point's own weights.
    if state.at_best_epoch_end() && !run.best().exists() {
        match &ema {
            Some(ema) => save_checkpoint(&ema.model, &run.best())?,
            None => save_checkpoint(&model.valid(), &run.best())?,
        }
    }

    let bar = progress_bar(total as u64, show_progress);
    bar.set_position((per_epoch * state.epochs_done + state.step_in_epoch) as u64);
    let started = Instant::now();
    let seconds_before = state.seconds;
    let mut session = Session::new(plan.checkpoint_minutes, plan.step_limit);
    let mut images_this_session = 0usize;
    let mut stopped = false;
    for epoch in state.epochs_done..plan.epochs {
        bar.set_prefix(format!("{}/{}", epoch + 1, plan.epochs));
        let batches = task.batches(epoch);
        anyhow::ensure!(
            batches.len() == per_epoch,
            "epoch {} has {} batches, the first had {per_epoch}",
            epoch + 1,
            batches.len()
        );
        let session_epoch_start = Instant::now();
        let seconds_before_epoch = state.partial_seconds;
        let ips = |state: &FitState<T::Epoch>| {
            state.partial_images as f64
                / (seconds_before_epoch + session_epoch_start.elapsed().as_secs_f64()).max(1e-9)
        };
        let mut window: Vec<Vec<f64>> = Vec::new();
        for (step, batch) in batches.iter().enumerate().skip(state.step_in_epoch) {
            let global = epoch * per_epoch + step;
            let loss = task.loss(&model, epoch, global, batch, &ad)?;
            let value: f64 = loss.parts.iter().sum();
            anyhow::ensure!(
                value.is_finite(),
                "the loss became {value} at epoch {} step {}; lower the learning rate",
                epoch + 1,
                step + 1
            );
            let lr = task.lr(global, per_epoch, total);
            let grads = GradientsParams::from_grads(loss.value.backward(), &model);
            model = optim.step(lr, model, grads);
            if let Some(ema) = ema.as_mut() {
                ema.update(model.valid());
            }
            for (s, p) in state.partial_loss.iter_mut().zip(&loss.parts) {
                *s += p;
            }
            state.partial_n += 1;
            state.partial_images += loss.images;
            state.step_in_epoch = step + 1;
            images_this_session += loss.images;
            window.push(loss.parts.iter().chain(&loss.extra).copied().collect());
            if (step + 1) % plan.log_every.max(1) == 0 || step + 1 == per_epoch {
                let n = window.len() as f64;
                let means: Vec<String> = (0..window[0].len())
                    .map(|c| {
                        let m = window.iter().map(|w| w[c]).sum::<f64>() / n;
                        // Counts (a detector's foreground anchors) stay whole numbers.
                        if m.fract() == 0.0 {
                            format!("{m:.0}")
                        } else {
                            format!("{m:.5}")
                        }
                    })
                    .collect();
                writeln!(
                    log,
                    "{},{},{lr:.6},{},{:.3}",
                    epoch + 1,
                    global + 1,
                    means.join(","),
                    ips(&state)
                )?;
                window.clear();
            }
            let n = state.partial_n as f64;
            let running: Vec<String> = T::LOSS_PARTS
                .iter()
                .zip(&state.partial_loss)
                .map(|(name, s)| format!("{name} {:.4}", s / n))
                .collect();
            bar.set_message(format!(
                "{}  {:.2} img/s  lr {lr:.2e}",
                running.join(" "),
                ips(&state)
            ));
            bar.inc(1);
            let next = session.after_step(step + 1 == per_epoch);
            if next.save {
                log.flush()?;
                state.partial_seconds =
                    seconds_before_epoch + session_epoch_start.elapsed().as_secs_f64();
                state.seconds = seconds_before + started.elapsed().as_secs_f64();
                // `valid()` folds in the batch-norm statistics of the last step, which a
                // running state keeps apart until it is read.
                save_resume_point(
                    &run.0,
                    &model.valid(),
                    ema.as_ref().map(|e| &e.model),
                    &optim,
                    &mut state,
                )?;
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

        let trained = model.valid();
        let eval_model = ema.as_ref().map_or(&trained, |e| &e.model);
        let n = state.partial_n.max(1) as f64;
        let mean_loss: Vec<f64> = state.partial_loss.iter().map(|s| s / n).collect();
        let (record, score) = task.validate(eval_model, epoch, &mean_loss, ips(&state))?;
        say(&bar, task.describe(&record));
        save_checkpoint(eval_model, &run.last())?;
        if better(score, state.best_score) {
            state.best_epoch = epoch + 1;
            state.best_score = score;
            save_checkpoint(eval_model, &run.best())?;
        }
        state.epochs.push(record);
        state.epochs_done = epoch + 1;
        state.step_in_epoch = 0;
        state.partial_loss = vec![0.0; parts];
        state.partial_n = 0;
        state.partial_images = 0;
        state.partial_seconds = 0.0;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        save_resume_point(
            &run.0,
            &trained,
            ema.as_ref().map(|e| &e.model),
            &optim,
            &mut state,
        )?;
        session.saved();
        task.epoch_done(run, &state)?;
        if session.stops_after_epoch(epoch, plan.epochs) {
            stopped = true;
            say(&bar, Session::stopped_after_epoch(epoch));
            break;
        }
    }
    bar.finish_and_clear();
    state.seconds = seconds_before + started.elapsed().as_secs_f64();
    Ok(Fitted {
        state,
        complete: !stopped,
        images_per_second: images_this_session as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measured_score_beats_none_and_without_one_the_latest_epoch_is_best() {
        assert!(better(Some(0.5), None));
        assert!(better(Some(0.6), Some(0.5)));
        assert!(
            !better(Some(0.5), Some(0.5)),
            "a tie keeps the earlier epoch"
        );
        assert!(!better(None, Some(0.5)));
        assert!(better(None, None));
    }

    #[test]
    fn the_detectors_state_from_before_fit_resumes() {
        // A state.json written by the detector's own loop (the run in checkpoints/ is one).
        let text = r#"{"epochs_done": 1, "best_epoch": 1, "best_fitness": 0.05,
            "epochs": [{"epoch": 1, "loss": [1.0, 2.0, 3.0]}],
            "step_in_epoch": 14, "partial_loss": [4.0, 5.0, 6.0], "partial_n": 14,
            "partial_images": 112, "partial_seconds": 50.0, "seconds": 170.0,
            "resume_dir": "resume-e001-s000014"}"#;
        let s: FitState<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(s.best_score, Some(0.05));
        assert_eq!(s.partial_loss, vec![4.0, 5.0, 6.0]);
        assert_eq!(s.point_name(), "resume-e001-s000014");
        assert_eq!(s.epochs.len(), s.epochs_done);
    }
}
