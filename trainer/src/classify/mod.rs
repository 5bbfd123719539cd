//! Classification, laid out as `detect/` is for the detector: the `classify` and `eval`
//! commands end to end in this file (data, split, training, scoring, thresholds chosen on
//! validation, the files a run leaves behind), the supervised training loop (`train.rs`), the
//! two-stage SSL model (`ssl.rs`), scoring and thresholds (`eval.rs`) and export (`export.rs`).

pub mod eval;
pub mod export;
pub mod ssl;
pub mod train;

use self::eval::{
    calibrate, score, scored_parts, write_predictions, ChosenThresholds, ClassifyMetrics,
    SplitReport,
};
use self::train::{build_model, TrainConfig, TrainSummary};
use crate::data::classify::Sample;
use crate::data::{ClassificationSplitConfig, FracAtlas, Split, SplitPart};
use crate::run::RunDir;
use anyhow::Context as _;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Trains a classifier run: `resnet-ssl-mlp` in its two stages ([`ssl::train`]), every other
/// model with the supervised loop ([`train::train`]). Resumes from the run's `state.json`.
pub fn train(
    config: &TrainConfig,
    train_samples: &[Sample],
    valid_samples: &[Sample],
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<TrainSummary> {
    let f = if config.model == crate::models::ModelKind::ResnetSslMlp {
        ssl::train
    } else {
        train::train
    };
    f(
        config,
        train_samples,
        valid_samples,
        run,
        device,
        show_progress,
    )
}

/// Which data a run used: saved as `RUN/data.json` so that `eval` rebuilds the same split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    /// The classification split.
    pub split: ClassificationSplitConfig,
    /// At most this many images per class in each part (smoke runs); `None` for all.
    pub limit_per_class: Option<usize>,
}

/// The samples of each split part, limited per class if asked.
pub fn split_samples(data: &FracAtlas, split: &Split, limit: Option<usize>) -> [Vec<Sample>; 3] {
    let take = |idx: &[usize]| {
        let all = Sample::from_indices(data, idx);
        match limit {
            None => all,
            Some(n) => {
                let pos = all.iter().filter(|s| s.label).take(n).cloned();
                let neg = all.iter().filter(|s| !s.label).take(n).cloned();
                pos.chain(neg).collect()
            }
        }
    };
    [take(&split.train), take(&split.valid), take(&split.test)]
}

/// The samples of the split a classifier run (`run`, its `data.json`) was trained on, from
/// the FracAtlas folder `data`: what `fuse` and `scope` read the exported model on.
pub fn run_split_samples(run: &Path, data: &Path) -> anyhow::Result<[Vec<Sample>; 3]> {
    let path = run.join("data.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no data.json; pass the classifier's run folder",
            run.display()
        )
    })?;
    let run_data: RunData = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run's data.json", path.display()))?;
    let fracatlas = FracAtlas::open(data)
        .with_context(|| format!("loading FracAtlas from {}", data.display()))?;
    let split = fracatlas.classification_split(&run_data.split)?;
    Ok(split_samples(&fracatlas, &split, run_data.limit_per_class))
}

/// Trains, then evaluates the best epoch on validation (thresholds) and test; no metrics
/// when training stopped at `config.session_step_limit` before its last epoch.
pub fn classify(
    data_dir: &Path,
    run_data: &RunData,
    config: &TrainConfig,
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<(TrainSummary, Option<ClassifyMetrics>)> {
    let data = FracAtlas::open(data_dir)
        .with_context(|| format!("loading FracAtlas from {}", data_dir.display()))?;
    let split = data.classification_split(&run_data.split)?;
    let [train_s, valid_s, _] = split_samples(&data, &split, run_data.limit_per_class);
    std::fs::create_dir_all(&run.0)?;
    // A resumed run must keep the split it started with.
    if let Ok(text) = std::fs::read_to_string(run.0.join("data.json")) {
        let saved: RunData = serde_json::from_str(&text)
            .with_context(|| format!("{}: data.json", run.0.display()))?;
        anyhow::ensure!(
            &saved == run_data,
            "{} was trained on another split ({:?}); resume with the same split flags or use a new --out",
            run.0.display(),
            saved.split
        );
    }
    std::fs::write(
        run.0.join("data.json"),
        serde_json::to_string_pretty(run_data)?,
    )?;
    let summary = train(config, &train_s, &valid_s, run, device, show_progress)?;
    if !summary.complete {
        // Stopped at its step limit with a checkpoint: evaluated when it finishes.
        return Ok((summary, None));
    }
    std::fs::write(
        run.0.join("train_summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    if let Err(e) = crate::plots::loss_plot(
        &run.0.join("loss.png"),
        &read_loss_log(&run.log()),
        &summary.epoch_valid_roc_auc,
    ) {
        tracing::warn!("{}: could not draw the loss figure: {e}", run.0.display());
    }
    let metrics = evaluate(data_dir, run, true, device)?;
    Ok((summary, Some(metrics)))
}

/// Re-evaluates a run's best checkpoint: calibration and thresholds on validation, then
/// test too when `with_test`.
/// Writes `RUN/metrics.json` and `RUN/predictions.csv`.
pub fn evaluate(
    data_dir: &Path,
    run: &RunDir,
    with_test: bool,
    device: &Device,
) -> anyhow::Result<ClassifyMetrics> {
    let read = |name: &str| {
        let p = run.0.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: cannot read; is {} a run made by `fv-train classify`?",
                p.display(),
                run.0.display()
            )
        })
    };
    let config: TrainConfig = serde_json::from_str(&read("config.json")?)?;
    let run_data: RunData = serde_json::from_str(&read("data.json")?)?;
    let data = FracAtlas::open(data_dir)
        .with_context(|| format!("loading FracAtlas from {}", data_dir.display()))?;
    let split = data.classification_split(&run_data.split)?;
    let [_, valid_s, test_s] = split_samples(&data, &split, run_data.limit_per_class);
    let model = build_model(&config, Some(&run.best()), device)?;

    let (mut valid, mut failures) = score(&model, &valid_s, &config, device);
    let mut test_preds = Vec::new();
    if with_test {
        let (preds, f) = score(&model, &test_s, &config, device);
        failures.extend(f);
        test_preds = preds;
    }
    // Calibrated on validation; thresholds and every figure below are on that scale.
    let (calibration, uncalibrated_ece) = calibrate(&mut valid, &mut [&mut test_preds]);
    let thresholds = ChosenThresholds::choose(&valid).context(
        "the validation split needs both fractured and non-fractured images to choose thresholds",
    )?;
    let mut test = None;
    let mut parts: Vec<(SplitPart, Vec<_>)> = vec![(SplitPart::Valid, valid.clone())];
    if with_test {
        test = Some(
            SplitReport::new(SplitPart::Test, &test_preds, &thresholds)
                .with_intervals(&test_preds, &thresholds),
        );
        parts.push((SplitPart::Test, test_preds));
    }
    let metrics = ClassifyMetrics {
        model: config.model.name().into(),
        checkpoint: run.best().display().to_string(),
        valid: SplitReport::new(SplitPart::Valid, &valid, &thresholds),
        thresholds,
        test,
        load_failures: failures,
        calibration,
        uncalibrated_ece: if with_test {
            uncalibrated_ece
        } else {
            uncalibrated_ece[..1].to_vec()
        },
    };
    std::fs::write(
        run.0.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?,
    )?;
    let refs: Vec<(&str, &[_])> = parts
        .iter()
        .map(|(s, p)| (s.as_str(), p.as_slice()))
        .collect();
    write_predictions(&run.0.join("predictions.csv"), &refs)?;
    // Figures help a reader but are not worth failing a finished evaluation for.
    if let Err(e) = crate::plots::evaluation_plots(
        &run.0,
        &scored_parts(&refs),
        metrics.thresholds.definite.threshold,
    ) {
        tracing::warn!(
            "{}: could not draw the evaluation figures: {e}",
            run.0.display()
        );
    }
    Ok(metrics)
}

/// A short text summary of metrics for the terminal.
pub fn summary_table(m: &ClassifyMetrics) -> String {
    let mut s = format!(
        "{}: thresholds chosen on validation: suspicious {:.4}, definite {:.4}\n",
        m.model,
        m.thresholds.suspicious.threshold.get(),
        m.thresholds.definite.threshold.get()
    );
    s += "split  n(frac/non)  ROC-AUC  PR-AUC   ECE   | suspicious: sens  spec | definite: sens  spec\n";
    for r in std::iter::once(&m.valid).chain(m.test.as_ref()) {
        let [auc, ap, ece, sus_sens, sus_spec, def_sens, def_spec] = r.headline("  n/a");
        s += &format!(
            "{:<6} {:>4}/{:<6}  {auc}    {ap}   {ece} |             {sus_sens}  {sus_spec} |           {def_sens}  {def_spec}\n",
            r.split, r.n_fractured, r.n_non_fractured,
        );
    }
    for f in m.test.iter().flat_map(|r| &r.intervals) {
        s += &format!(
            "test {:<24} {:.3} ({:.3}–{:.3})\n",
            f.name, f.value, f.interval[0], f.interval[1]
        );
    }
    s
}

/// `(step, loss)` from a run's `train_log.csv`.
fn read_loss_log(path: &Path) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(i), Some(l)) = (col("step"), col("loss")) else {
        return Vec::new();
    };
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Some((f.get(i)?.parse().ok()?, f.get(l)?.parse().ok()?))
        })
        .collect()
}
