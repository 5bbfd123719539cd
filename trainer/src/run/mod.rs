//! What every training run shares, classifier or detector: its folder, resumable
//! checkpoints (weights, optimizer moments, the progress record that names them), the
//! PyTorch-layout checkpoint files, the progress bar and the commit it was made from; and
//! [`fit`], the training loop every task goes through.

pub mod ema;
pub mod fit;
pub use fit::fit;

use anyhow::Context as _;
use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, SafetensorsStore};
use fv_core::manifest::Task as ManifestTask;
use serde::Serialize;
use std::path::{Path, PathBuf};

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

/// A run's progress record (`RUN/state.json`), which names the resume checkpoint it goes with.
pub trait ResumeState: Serialize {
    /// The folder name for a checkpoint of this state (`resume-e…-s…`).
    fn point_name(&self) -> String;
    /// Records that `name` now holds this state's weights and optimizer moments.
    fn set_resume_dir(&mut self, name: String);
}

/// The file of a resume point that holds the weights' moving average, in runs that keep one.
pub const AVERAGE_FILE: &str = "ema.bpk";

fn save_burnpack<M: Module>(model: &M, path: &Path) -> anyhow::Result<()> {
    model
        .save_into(
            &mut BurnpackStore::from_file(path)
                .auto_extension(false)
                .overwrite(true),
        )
        .map_err(|e| anyhow::anyhow!("{}: cannot save: {e}", path.display()))
}

/// Writes weights (burnpack, with parameter ids), their moving average if the run keeps one,
/// and optimizer moments into a new folder, then the state that names it, then removes older
/// folders: a crash at any point leaves a state and the checkpoint it names.
pub fn save_resume_point<M: Module, S: ResumeState>(
    run: &Path,
    model: &M,
    average: Option<&M>,
    optim: &burn::optim::ModuleOptimizer,
    state: &mut S,
) -> anyhow::Result<()> {
    let name = state.point_name();
    let dir = run.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    save_burnpack(model, &dir.join("model.bpk"))?;
    let mut written = vec!["model.bpk", "optim.bpk"];
    if let Some(average) = average {
        save_burnpack(average, &dir.join(AVERAGE_FILE))?;
        written.push(AVERAGE_FILE);
    }
    let path = dir.join("optim.bpk");
    optim
        .save(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot save: {e}", path.display()))?;
    for f in written {
        std::fs::File::open(dir.join(f))?.sync_all()?;
    }
    state.set_resume_dir(name.clone());
    let state_path = run.join("state.json");
    fv_core::durable::write(&state_path, serde_json::to_string_pretty(state)?.as_bytes())
        .with_context(|| format!("{}: cannot write", state_path.display()))?;
    for e in std::fs::read_dir(run)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("resume-") && n != name {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Loads what [`save_resume_point`] wrote in `dir` into a freshly built `model` and `optim`.
pub fn load_resume_point<M: Module>(
    dir: &Path,
    mut model: M,
    optim: burn::optim::ModuleOptimizer,
) -> anyhow::Result<(M, burn::optim::ModuleOptimizer)> {
    // Burnpack keeps parameter ids, which the optimizer's moments are keyed by.
    let path = dir.join("model.bpk");
    model
        .load_from(&mut BurnpackStore::from_file(&path))
        .map_err(|e| {
            anyhow::anyhow!("{}: cannot load the resume checkpoint: {e}", path.display())
        })?;
    let path = dir.join("optim.bpk");
    let optim = optim
        .load(&path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the optimizer state: {e}", path.display()))?;
    Ok((model, optim))
}

/// Loads the moving average a resume point in `dir` holds into `blank`, or `None` when the
/// point has none.
pub fn load_average<M: Module>(dir: &Path, mut blank: M) -> anyhow::Result<Option<M>> {
    let path = dir.join(AVERAGE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    blank
        .load_from(&mut BurnpackStore::from_file(&path))
        .map_err(|e| {
            anyhow::anyhow!("{}: cannot load the weights' average: {e}", path.display())
        })?;
    Ok(Some(blank))
}

/// Keeps the header of a step log (`epoch,step,…`, `step` counted over the whole run) and
/// its lines up to global step `last`.
pub fn truncate_log_after(path: &Path, last: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| {
            *i == 0
                || l.split(',')
                    .nth(1)
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_some_and(|step| step <= last)
        })
        .map(|(_, l)| l)
        .collect();
    if kept.len() < text.lines().count() {
        std::fs::write(path, kept.join("\n") + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

/// A summary written before runs could stop early describes a finished run.
pub fn complete_by_default() -> bool {
    true
}

/// This session's share of a run: when a training loop saves a resume point inside an epoch
/// (every `checkpoint_minutes`) and when it stops (after `step_limit` steps), the same for
/// every task. Epoch ends always save; this decides the rest.
pub struct Session {
    checkpoint_seconds: f64,
    step_limit: Option<usize>,
    steps: usize,
    last_save: std::time::Instant,
}

/// What a training loop does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfterStep {
    /// Save a resume point now.
    pub save: bool,
    /// Then stop the session (inside the epoch).
    pub stop: bool,
}

impl Session {
    /// A session that saves every `checkpoint_minutes` and stops after `step_limit` steps.
    pub fn new(checkpoint_minutes: f64, step_limit: Option<usize>) -> Self {
        Session {
            checkpoint_seconds: checkpoint_minutes * 60.0,
            step_limit,
            steps: 0,
            last_save: std::time::Instant::now(),
        }
    }

    /// Counts a finished step; `epoch_ends` when it was the epoch's last, whose resume point
    /// and stop the epoch's end handles.
    pub fn after_step(&mut self, epoch_ends: bool) -> AfterStep {
        self.steps += 1;
        if epoch_ends {
            return AfterStep {
                save: false,
                stop: false,
            };
        }
        let stop = self.step_limit == Some(self.steps);
        AfterStep {
            save: stop || self.last_save.elapsed().as_secs_f64() >= self.checkpoint_seconds,
            stop,
        }
    }

    /// A resume point was saved: the clock restarts.
    pub fn saved(&mut self) {
        self.last_save = std::time::Instant::now();
    }

    /// After epoch `epoch` (0-based) of `epochs`: whether the step limit ends the session
    /// before the next.
    pub fn stops_after_epoch(&self, epoch: usize, epochs: usize) -> bool {
        self.step_limit.is_some_and(|l| self.steps >= l) && epoch + 1 < epochs
    }

    /// The line for a stop inside epoch `epoch` (0-based) after its step `step` (1-based).
    pub fn stopped_in_epoch(epoch: usize, step: usize) -> String {
        format!(
            "stopped at epoch {} step {step} (session step limit); continue with --resume",
            epoch + 1
        )
    }

    /// The line for a stop after epoch `epoch` (0-based).
    pub fn stopped_after_epoch(epoch: usize) -> String {
        format!(
            "stopped after epoch {} (session step limit); continue with --resume",
            epoch + 1
        )
    }
}

/// Saves a model in PyTorch layout, like the pretrained files, so one loader reads both.
pub fn save_checkpoint<M: Module>(model: &M, path: &Path) -> anyhow::Result<()> {
    let tmp = fv_core::durable::temporary(path);
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: cannot save checkpoint: {e}", tmp.display()))?;
    // A crash never leaves a half-written checkpoint under the real name.
    fv_core::durable::commit(&tmp, path)
        .with_context(|| format!("{}: cannot write the checkpoint", path.display()))
}

/// The training progress bar (steps, epoch, message, ETA), or a hidden one for background runs.
pub fn progress_bar(steps: u64, show: bool) -> indicatif::ProgressBar {
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
pub fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The checked-out commit, or `unknown` outside a git work tree.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// What a run folder trains, as recorded in `RUN/task` when the run starts (fv-core's
/// manifest [`ManifestTask`], in its spelling), so that `eval` and `export` never guess it.
pub fn task_of(run: &Path) -> anyhow::Result<ManifestTask> {
    let path = run.join("task");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read; pass a run folder made by fv-train classify or detect (a run made \
             before the task was recorded: write `classify` or `detect` into that file)",
            path.display()
        )
    })?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Records, when a run starts, what it trains, the exact command (`command`: the arguments
/// that train it, also when `carry resume` runs them) and the commit: the manifest's
/// provenance, [`task_of`] and `carry` read them back.
pub fn record_start(run: &Path, task: ManifestTask, command: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(run).with_context(|| format!("{}: cannot create", run.display()))?;
    for (name, text) in [
        ("task", task.to_string()),
        ("command.txt", command.join(" ")),
        // The arguments as given, for `fv-train carry resume` (a path may hold a space).
        ("command.json", serde_json::to_string(&command)?),
        ("git_commit.txt", git_commit()),
    ] {
        let path = run.join(name);
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_says_its_task_and_a_run_without_the_record_is_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let det = tmp.path().join("det");
        let command = ["fv-train", "detect", "--out", "det"].map(String::from);
        record_start(&det, ManifestTask::Detect, &command).unwrap();
        let recorded: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(det.join("command.json")).unwrap())
                .unwrap();
        assert_eq!(recorded, command);
        assert_eq!(task_of(&det).unwrap(), ManifestTask::Detect);
        assert!(det.join("command.txt").is_file() && det.join("git_commit.txt").is_file());
        let old = tmp.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        let e = format!("{:#}", task_of(&old).unwrap_err());
        assert!(e.contains("write `classify` or `detect`"), "{e}");
        std::fs::write(old.join("task"), "segment\n").unwrap();
        let e = task_of(&old).unwrap_err().to_string();
        assert!(e.contains("segment"), "{e}");
    }

    #[test]
    fn a_resumed_log_keeps_each_step_once() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("train_log.csv");
        std::fs::write(&p, "epoch,step,lr\n1,1,0.1\n1,2,0.1\n1,3,0.1\n2,4,0.1\n").unwrap();
        truncate_log_after(&p, 2).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "epoch,step,lr\n1,1,0.1\n1,2,0.1\n"
        );
    }

    #[test]
    fn a_session_stops_at_its_step_limit_and_leaves_epoch_ends_to_the_epoch() {
        // No checkpoint by time (a year), a limit of 3 steps, epochs of 2 steps.
        let mut s = Session::new(525_600.0, Some(3));
        let a = s.after_step(false);
        assert!(!a.save && !a.stop);
        let b = s.after_step(true);
        assert!(!b.save && !b.stop, "the epoch's end saves and stops itself");
        assert!(!s.stops_after_epoch(0, 5));
        let c = s.after_step(false);
        assert!(
            c.save && c.stop,
            "the limit inside an epoch saves, then stops"
        );
        // At the limit after an epoch's end: stop, unless it was the last epoch.
        let mut e = Session::new(525_600.0, Some(2));
        e.after_step(false);
        e.after_step(true);
        assert!(e.stops_after_epoch(0, 5));
        assert!(!e.stops_after_epoch(4, 5));
        // A checkpoint interval of zero saves after every step inside an epoch.
        let mut z = Session::new(0.0, None);
        assert!(z.after_step(false).save);
        assert!(!z.after_step(true).save);
    }
}
