//! `fv-train shifts`: the shipped reading under the fleet's shift suite. Every image of a
//! split, as it is and under each shift of [`Shift::SUITE`] (another unit's exposure and
//! processing, framing, resolution), read by the models directory as fv-edge reads it
//! (`fv_runtime::Models::read`: both views, the fusion, the prevalence correction), with the
//! scope check set aside so that every image gets a probability; ROC-AUC and each operating
//! point's sensitivity and specificity per shift, with 95 % bootstrap intervals.
//!
//! The scale check (`scale_check`) reads only the images larger than a long side, as they
//! are and resampled to it: a reading that moves with scale alone is the resolution shortcut
//! (FracAtlas' high-resolution images are all in training and skew positive).

use crate::classify::run_split_samples;
use crate::data::shift::Shift;
use crate::data::SplitPart;
use anyhow::Context as _;
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::metrics::classification::{
    bootstrap_interval, roc_auc, sensitivity_at, specificity_at, Scored,
};
use fv_runtime::{DetectPolicy, ReadOptions, Selection};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to read.
#[derive(Clone, Debug)]
pub struct ShiftOptions {
    /// The models directory (the classifier and the detector it is fused with).
    pub models: PathBuf,
    /// The classifier's run folder: its `data.json` names the split.
    pub run: PathBuf,
    /// The FracAtlas folder.
    pub data: PathBuf,
    /// Which part of the split.
    pub split: SplitPart,
    /// Where `shifts.json` and `predictions.csv` go.
    pub out: PathBuf,
    /// The scale check instead of the suite: only the images whose long side exceeds this,
    /// as they are and resampled to it.
    pub scale_check: Option<u32>,
    /// Only these shifts of the suite, by name (all when empty); the images as they are
    /// are always read.
    pub only: Vec<String>,
}

/// One figure and its 95 % interval.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// On all the images.
    pub value: f64,
    /// 2.5th and 97.5th percentiles over 1 000 stratified resamples.
    pub interval: [f64; 2],
}

/// The reading under one shift.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnderShift {
    /// `none`, or the shift's name.
    pub shift: String,
    /// Images read, fractured and not.
    pub n: [usize; 2],
    /// ROC-AUC.
    pub roc_auc: Figure,
    /// Change of ROC-AUC from the images as they are.
    pub roc_auc_change: f64,
    /// At `suspicious` and `definite`: `[sensitivity, specificity]`.
    pub suspicious: [Figure; 2],
    /// The same at `definite`.
    pub definite: [Figure; 2],
    /// Mean probability of the fractured and of the other images.
    pub mean_probability: [f64; 2],
}

fn figure(s: &[Scored], f: impl Fn(&[Scored]) -> Option<f64>) -> Figure {
    let value = f(s).unwrap_or(f64::NAN);
    let interval = bootstrap_interval(s, &f, 1000, 29).map_or([f64::NAN; 2], |(l, h)| [l, h]);
    Figure { value, interval }
}

/// Reads every image under every shift; writes `OUT/shifts.json` and `OUT/predictions.csv`.
pub fn shifts(o: &ShiftOptions) -> anyhow::Result<Vec<UnderShift>> {
    let [train, valid, test] = run_split_samples(&o.run, &o.data)?;
    let samples = match (o.split, o.scale_check) {
        (SplitPart::Valid, _) => valid,
        (SplitPart::Test, _) => test,
        (SplitPart::Train, Some(_)) => train,
        (SplitPart::Train, None) => {
            anyhow::bail!(
                "read the shift suite on validation or test (training: --scale-check only)"
            )
        }
    };
    let (conditions, samples): (Vec<Option<Shift>>, _) = match o.scale_check {
        None => (
            std::iter::once(None)
                .chain(suite(&o.only)?.into_iter().map(Some))
                .collect(),
            samples,
        ),
        Some(px) => {
            let mut larger = Vec::new();
            for s in samples {
                let h = fv_core::imaging::inspect_file(&s.path)
                    .with_context(|| format!("{}: cannot read its header", s.path.display()))?;
                if h.stored_width.max(h.stored_height) > px {
                    larger.push(s);
                }
            }
            anyhow::ensure!(
                !larger.is_empty(),
                "no image of this split has a long side over {px} px"
            );
            (vec![None, Some(Shift::LongSide(px))], larger)
        }
    };
    let mut models = fv_runtime::models::load_dir(&o.models, &Selection::default())?;
    // Every image gets a probability: the scope check's refusals under the shifts are
    // RESULTS.md's scope section.
    models.classifier.manifest.applicability = None;
    let options = ReadOptions {
        detect: DetectPolicy::Suspicious,
        min_score: None,
    };
    // The thresholds the unit applies: the fusion's with its detector, at the manifest's
    // prevalence, as `image_reading` moves them.
    let m = &models.classifier.manifest;
    let t = fv_core::reading::fusion_with(m, models.detector.as_ref().map(|d| &d.manifest))
        .map_or(m.thresholds, |f| f.thresholds)
        .at(m.prevalence);
    // Each image decoded once, then read under every condition.
    let mut scored: Vec<Vec<Scored>> = vec![Vec::new(); conditions.len()];
    for (i, s) in samples.iter().enumerate() {
        let decoded = decode_file(&s.path, &DecodeOptions::default())
            .with_context(|| format!("{}: cannot decode", s.path.display()))?;
        for (shift, these) in conditions.iter().zip(&mut scored) {
            let r = match shift {
                Some(sh) => models.read(&sh.apply(&decoded.image, i as u64), &options)?,
                None => models.read(&decoded.image, &options)?,
            };
            these.push(Scored {
                score: r
                    .probability
                    .context("a probability with the scope check aside")?,
                positive: s.label,
            });
        }
        if (i + 1) % 20 == 0 || i + 1 == samples.len() {
            tracing::info!(
                "{} of {} images read under {} conditions",
                i + 1,
                samples.len(),
                conditions.len()
            );
        }
    }
    let name = |c: &Option<Shift>| c.map_or_else(|| "none".to_owned(), |s| s.name());
    let base = roc_auc(&scored[0]).unwrap_or(f64::NAN);
    let report: Vec<UnderShift> = conditions
        .iter()
        .zip(&scored)
        .map(|(c, s)| {
            let auc = figure(s, roc_auc);
            UnderShift {
                shift: name(c),
                n: [
                    s.iter().filter(|x| x.positive).count(),
                    s.iter().filter(|x| !x.positive).count(),
                ],
                roc_auc_change: auc.value - base,
                roc_auc: auc,
                suspicious: [
                    figure(s, sensitivity_at(t.suspicious)),
                    figure(s, specificity_at(t.suspicious)),
                ],
                definite: [
                    figure(s, sensitivity_at(t.definite)),
                    figure(s, specificity_at(t.definite)),
                ],
                mean_probability: [true, false].map(|fractured| {
                    let p: Vec<f64> = s
                        .iter()
                        .filter(|x| x.positive == fractured)
                        .map(|x| x.score.get())
                        .collect();
                    p.iter().sum::<f64>() / p.len().max(1) as f64
                }),
            }
        })
        .collect();
    std::fs::create_dir_all(&o.out)?;
    write(
        &o.out.join("shifts.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let mut csv = String::from("shift,id,fractured,probability\n");
    for (c, these) in conditions.iter().zip(&scored) {
        for (sample, x) in samples.iter().zip(these) {
            let (shift, id, p) = (name(c), &sample.id, x.score.get());
            csv += &format!("{shift},{id},{},{p:.6}\n", x.positive as u8);
        }
    }
    write(&o.out.join("predictions.csv"), csv.as_bytes())?;
    Ok(report)
}

/// The suite's shifts named in `only`, or all of them.
fn suite(only: &[String]) -> anyhow::Result<Vec<Shift>> {
    if let Some(unknown) = only
        .iter()
        .find(|n| !Shift::SUITE.iter().any(|s| s.name() == **n))
    {
        let names: Vec<String> = Shift::SUITE.iter().map(Shift::name).collect();
        anyhow::bail!(
            "--only {unknown}: no such shift in the suite; it has {}",
            names.join(", ")
        );
    }
    Ok(Shift::SUITE
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(&s.name()))
        .collect())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fv_core::durable::write(path, bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// A Markdown table of the report.
pub fn table(r: &[UnderShift]) -> String {
    let f = |x: &Figure| format!("{:.3} ({:.3}–{:.3})", x.value, x.interval[0], x.interval[1]);
    let mut s = String::from(
        "| shift | ROC-AUC (95 %) | change | `suspicious` sens | `suspicious` spec | `definite` sens | `definite` spec | mean p (fractured / not) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for u in r {
        s += &format!(
            "| {} | {} | {:+.3} | {} | {} | {} | {} | {:.3} / {:.3} |\n",
            u.shift,
            f(&u.roc_auc),
            u.roc_auc_change,
            f(&u.suspicious[0]),
            f(&u.suspicious[1]),
            f(&u.definite[0]),
            f(&u.definite[1]),
            u.mean_probability[0],
            u.mean_probability[1]
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_picks_shifts_by_their_report_names() {
        assert_eq!(suite(&[]).unwrap().len(), Shift::SUITE.len());
        let picked = suite(&["depth-12".into(), "noise-8".into()]).unwrap();
        assert_eq!(picked, vec![Shift::Noise(8.0), Shift::Depth(12)]);
        let e = suite(&["depth-13".into()]).unwrap_err().to_string();
        assert!(
            e.contains("--only depth-13") && e.contains("gamma-0.6"),
            "{e}"
        );
    }
}
