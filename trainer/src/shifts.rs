//! `fv-train shifts`: the shipped reading under the fleet's shift suite. Every image of a
//! split, as it is and under each shift of [`Shift::SUITE`] (another unit's exposure and
//! processing, framing, resolution), read by the models directory as fv-edge reads it
//! (`fv_runtime::Models::read`: both views, the fusion, the prevalence correction), with the
//! scope check set aside so that every image gets a probability; ROC-AUC and each operating
//! point's sensitivity and specificity per shift, with 95 % bootstrap intervals.

use crate::classify::run_split_samples;
use crate::data::shift::Shift;
use crate::data::SplitPart;
use anyhow::Context as _;
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::metrics::classification::{bootstrap_interval, roc_auc, BinaryReport, Scored};
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
}

fn figure(s: &[Scored], f: impl Fn(&[Scored]) -> Option<f64>) -> Figure {
    let value = f(s).unwrap_or(f64::NAN);
    let interval = bootstrap_interval(s, &f, 1000, 29).map_or([f64::NAN; 2], |(l, h)| [l, h]);
    Figure { value, interval }
}

/// Reads every image under every shift; writes `OUT/shifts.json` and `OUT/predictions.csv`.
pub fn shifts(o: &ShiftOptions) -> anyhow::Result<Vec<UnderShift>> {
    let [train, valid, test] = run_split_samples(&o.run, &o.data)?;
    drop(train);
    let samples = match o.split {
        SplitPart::Valid => valid,
        SplitPart::Test => test,
        SplitPart::Train => anyhow::bail!("read the shifts on validation or test"),
    };
    let mut models = fv_runtime::models::load_dir(&o.models, &Selection::default())?;
    // Every image gets a probability: the scope check's refusals under the shifts are
    // RESULTS.md's scope section.
    models.classifier.manifest.applicability = None;
    let options = ReadOptions {
        detect: DetectPolicy::Suspicious,
        min_score: None,
    };
    let mut conditions: Vec<Option<Shift>> = vec![None];
    conditions.extend(Shift::SUITE.iter().copied().map(Some));
    let mut rows: Vec<(String, String, bool, f64)> = Vec::new();
    let mut scored: Vec<(String, Vec<Scored>, fv_core::manifest::Thresholds)> = Vec::new();
    for shift in &conditions {
        let name = shift.map_or_else(|| "none".to_owned(), |s| s.name());
        let mut these = Vec::new();
        let mut thresholds = None;
        for (i, s) in samples.iter().enumerate() {
            let decoded = decode_file(&s.path, &DecodeOptions::default())
                .with_context(|| format!("{}: cannot decode", s.path.display()))?;
            let image = match shift {
                Some(sh) => sh.apply(&decoded.image, i as u64),
                None => decoded.image,
            };
            let r = models.read(&image, &options)?;
            let p = r
                .probability
                .context("a probability with the scope check aside")?;
            thresholds.get_or_insert_with(|| {
                let m = &models.classifier.manifest;
                let t =
                    fv_core::reading::fusion_with(m, models.detector.as_ref().map(|d| &d.manifest))
                        .map_or(m.thresholds, |f| f.thresholds);
                match m.prevalence {
                    Some(at) => fv_core::manifest::Thresholds {
                        suspicious: at.threshold(t.suspicious),
                        definite: at.threshold(t.definite),
                    },
                    None => t,
                }
            });
            these.push(Scored {
                score: p,
                positive: s.label,
            });
            rows.push((name.clone(), s.id.clone(), s.label, p.get()));
        }
        tracing::info!("{name}: {} images read", these.len());
        scored.push((name, these, thresholds.context("no image in the split")?));
    }
    let base = roc_auc(&scored[0].1).unwrap_or(f64::NAN);
    let report: Vec<UnderShift> = scored
        .iter()
        .map(|(name, s, t)| {
            let at = |th: fv_core::Probability, sens: bool| {
                move |x: &[Scored]| {
                    let r = BinaryReport::new(x, th);
                    if sens {
                        r.sensitivity
                    } else {
                        r.specificity
                    }
                }
            };
            let auc = figure(s, roc_auc);
            UnderShift {
                shift: name.clone(),
                n: [
                    s.iter().filter(|x| x.positive).count(),
                    s.iter().filter(|x| !x.positive).count(),
                ],
                roc_auc_change: auc.value - base,
                roc_auc: auc,
                suspicious: [
                    figure(s, at(t.suspicious, true)),
                    figure(s, at(t.suspicious, false)),
                ],
                definite: [
                    figure(s, at(t.definite, true)),
                    figure(s, at(t.definite, false)),
                ],
            }
        })
        .collect();
    std::fs::create_dir_all(&o.out)?;
    write(
        &o.out.join("shifts.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let mut csv = String::from("shift,id,fractured,probability\n");
    for (shift, id, y, p) in &rows {
        csv += &format!("{shift},{id},{},{p:.6}\n", *y as u8);
    }
    write(&o.out.join("predictions.csv"), csv.as_bytes())?;
    Ok(report)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fv_core::durable::write(path, bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// A Markdown table of the report.
pub fn table(r: &[UnderShift]) -> String {
    let f = |x: &Figure| format!("{:.3} ({:.3}–{:.3})", x.value, x.interval[0], x.interval[1]);
    let mut s = String::from(
        "| shift | ROC-AUC (95 %) | change | `suspicious` sens | `suspicious` spec | `definite` sens | `definite` spec |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for u in r {
        s += &format!(
            "| {} | {} | {:+.3} | {} | {} | {} | {} |\n",
            u.shift,
            f(&u.roc_auc),
            u.roc_auc_change,
            f(&u.suspicious[0]),
            f(&u.suspicious[1]),
            f(&u.definite[0]),
            f(&u.definite[1])
        );
    }
    s
}
