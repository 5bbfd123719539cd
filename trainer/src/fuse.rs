//! `fv-train fuse`: one decision from both models. Reads every validation and test image of a
//! classifier run's split as fv-edge does (fv-core's decoder and preprocessing, the exported
//! ONNX files run by tract, fv-core's [`image_reading`]), fits the fusion of the classifier's
//! and the detector's scores on validation, chooses its thresholds there, and reports on test
//! the classifier alone, the detector alone (its top box score as the image's score) and the
//! fusion.
//!
//! The fusion is kept only when it beats the classifier alone out of fold on validation
//! (5-fold cross-validated log loss): with 245 validation images, a third weight is not free.

pub use crate::classify::eval::WithInterval;
use crate::classify::eval::{
    calibrate, scored, with_intervals, write_predictions, ChosenThresholds, Prediction, SplitReport,
};
use crate::classify::run_split_samples;
use crate::data::classify::Sample;
use crate::data::SplitPart;
use crate::export::save_manifest;
use anyhow::Context as _;
use fv_core::calibration::{Calibration, Prevalence};
use fv_core::drift::{ClassBehaviour, Expected};
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::manifest::{Manifest, Thresholds};
use fv_core::metrics::classification::{roc_auc, BinaryReport, OperatingPoint, Scored};
use fv_core::preprocess::preprocess;
use fv_core::reading::{
    classifier_raw, detector_top_score, image_reading, mean_of_views, ClassifierViews, Fusion,
};
use fv_core::Probability;
use fv_runtime::{Found, TractEngine};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to fuse, on which data.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// The classifier's manifest (`models/<name>.json`, the ONNX file beside it).
    pub classifier: PathBuf,
    /// The detector's manifest.
    pub detector: PathBuf,
    /// The classifier's run folder: its `data.json` names the split.
    pub run: PathBuf,
    /// The FracAtlas folder.
    pub data: PathBuf,
    /// Where the report, predictions and figures go.
    pub out: PathBuf,
    /// Write the fusion into the classifier's manifest when validation prefers it.
    pub write: bool,
}

/// One image as both models read it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BothReadings {
    /// FracAtlas id.
    pub id: String,
    /// Fractured (truth).
    pub fractured: bool,
    /// The classifier's raw probability on the image.
    pub classifier_raw: Probability,
    /// The classifier's raw probability on the image mirrored left to right.
    pub classifier_raw_mirrored: Probability,
    /// The classifier's probability as the edge would report it alone: calibrated as its
    /// manifest says, or, once validation chooses test-time flips, recalibrated on them.
    pub classifier: Probability,
    /// The detector's top box score.
    pub detector_top: Probability,
}

/// `OUT/fusion.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FuseReport {
    /// Classifier model name.
    pub classifier: String,
    /// Detector model name.
    pub detector: String,
    /// Weights `[classifier, detector, bias]` fitted on validation.
    pub weights: [f64; 3],
    /// 5-fold cross-validated log loss on validation: the fusion (`None`: a fold lacked a
    /// class, too few validation images to choose).
    pub cv_log_loss_fusion: Option<f64>,
    /// The same for the classifier alone (Platt).
    pub cv_log_loss_classifier: Option<f64>,
    /// Whether the fusion is kept (lower cross-validated loss, positive weights).
    pub kept: bool,
    /// Thresholds per reading (classifier: its manifest's; others chosen on validation).
    pub thresholds: BTreeMap<String, ChosenThresholds>,
    /// Reports per reading and split.
    pub reports: BTreeMap<String, [SplitReport; 2]>,
    /// Whether horizontal-flip test-time augmentation of the classifier helps, on validation.
    pub hflip: HflipComparison,
    /// Images that could not be read.
    pub failures: Vec<String>,
}

/// The classifier read as is (`[0]`) and as the mean of its raw probabilities on the image
/// and on its mirror (`[1]`). Validation alone decides; test is reported, not used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HflipComparison {
    /// The classifier's raw ROC-AUC on validation.
    pub valid_roc_auc: [Option<f64>; 2],
    /// 5-fold cross-validated log loss on validation of the classifier alone (Platt).
    pub cv_log_loss_classifier: [Option<f64>; 2],
    /// The same for the fusion with the detector.
    pub cv_log_loss_fusion: [Option<f64>; 2],
    /// The classifier's raw ROC-AUC on test.
    pub test_roc_auc: [Option<f64>; 2],
    /// Validation prefers the mirrored mean: a lower cross-validated log loss of the fusion
    /// and no lower ROC-AUC.
    pub helps: bool,
}

impl HflipComparison {
    fn new(valid: &[BothReadings], test: &[BothReadings]) -> Self {
        let auc = |r: &[BothReadings], tta: bool| {
            let s: Vec<Scored> = r
                .iter()
                .map(|b| Scored {
                    score: b.classifier_score(tta),
                    positive: b.fractured,
                })
                .collect();
            roc_auc(&s)
        };
        let labels: Vec<bool> = valid.iter().map(|b| b.fractured).collect();
        let vd: Vec<Probability> = valid.iter().map(|b| b.detector_top).collect();
        let cv = |tta: bool| {
            let vc: Vec<Probability> = valid.iter().map(|b| b.classifier_score(tta)).collect();
            Fusion::cross_validated_log_loss(&vc, &vd, &labels, 5)
        };
        let (plain, tta) = (cv(false), cv(true));
        let valid_roc_auc = [auc(valid, false), auc(valid, true)];
        let helps = matches!((plain, tta), (Some(p), Some(t)) if t.0 < p.0)
            && matches!(valid_roc_auc, [Some(p), Some(t)] if t >= p);
        HflipComparison {
            valid_roc_auc,
            cv_log_loss_classifier: [plain.map(|c| c.1), tta.map(|c| c.1)],
            cv_log_loss_fusion: [plain.map(|c| c.0), tta.map(|c| c.0)],
            test_roc_auc: [auc(test, false), auc(test, true)],
            helps,
        }
    }
}

impl BothReadings {
    /// The classifier's raw probability on the image, or with test-time flips
    /// ([`mean_of_views`]) the mean over the image and its mirror.
    pub fn classifier_score(&self, flips: bool) -> Probability {
        match flips {
            true => mean_of_views(self.classifier_raw, self.classifier_raw_mirrored),
            false => self.classifier_raw,
        }
    }
}

struct Loaded {
    manifest: Manifest,
    engine: TractEngine,
}

/// The manifest `json` and the engine built from the very ONNX bytes its sha256 names, as
/// fv-edge loads it.
fn load(json: &Path) -> anyhow::Result<Loaded> {
    let checked = Found::open(json)?.read_checked()?;
    Ok(Loaded {
        engine: checked.tract()?,
        manifest: checked.found.manifest,
    })
}

fn read_one(s: &Sample, c: &Loaded, d: &Loaded) -> anyhow::Result<BothReadings> {
    let decoded = decode_file(&s.path, &DecodeOptions::default())?;
    let first = |m: &Loaded, tensor: &[f32]| -> anyhow::Result<Vec<f32>> {
        Ok(m.engine
            .run_values(tensor)?
            .into_iter()
            .next()
            .unwrap_or_default())
    };
    let cpre = preprocess(&decoded.image, &c.manifest.input).tensor;
    let co = first(c, &cpre.data)?;
    let mirrored = first(c, &cpre.mirrored().data)?;
    let dout = first(
        d,
        &preprocess(&decoded.image, &d.manifest.input).tensor.data,
    )?;
    // A manifest written by an earlier `fuse --write` may already ask for the mirror.
    let views = ClassifierViews {
        image: &co,
        mirrored: c.manifest.test_time_hflip.then_some(mirrored.as_slice()),
    };
    Ok(BothReadings {
        id: s.id.clone(),
        fractured: s.label,
        classifier_raw: classifier_raw(&c.manifest, &co)?,
        classifier_raw_mirrored: classifier_raw(&c.manifest, &mirrored)?,
        classifier: image_reading(&c.manifest, views, None)?.probability,
        detector_top: detector_top_score(&d.manifest, &dout)?,
    })
}

fn preds(r: &[BothReadings], score: impl Fn(&BothReadings) -> Probability) -> Vec<Prediction> {
    r.iter()
        .map(|b| Prediction {
            id: b.id.clone(),
            fractured: b.fractured,
            probability: score(b),
        })
        .collect()
}

/// Runs the whole comparison; see the module doc.
pub fn fuse(o: &FuseOptions) -> anyhow::Result<FuseReport> {
    let c = load(&o.classifier)?;
    let d = load(&o.detector)?;
    anyhow::ensure!(
        c.manifest.task == fv_core::manifest::Task::Classify
            && d.manifest.task == fv_core::manifest::Task::Detect,
        "--classifier must be a classifier's manifest and --detector a detector's"
    );
    let [_, valid_s, test_s] = run_split_samples(&o.run, &o.data)?;
    let mut failures = Vec::new();
    let mut read_all = |samples: &[Sample]| -> Vec<BothReadings> {
        let results: Vec<_> = samples
            .par_iter()
            .map(|s| (s, read_one(s, &c, &d)))
            .collect();
        let mut ok = Vec::new();
        for (s, r) in results {
            match r {
                Ok(b) => ok.push(b),
                Err(e) => failures.push(format!("{}: {e:#}", s.id)),
            }
        }
        ok
    };
    let valid = read_all(&valid_s);
    let test = read_all(&test_s);
    tracing::info!(
        "read {} validation and {} test images with both models ({} failed)",
        valid.len(),
        test.len(),
        failures.len()
    );

    // Test-time flips first: validation decides, and everything after is fitted to the
    // classifier's score as the edge will then compute it.
    let hflip = HflipComparison::new(&valid, &test);
    let tta = hflip.helps;
    let score = |b: &BothReadings| b.classifier_score(tta);
    let labels: Vec<bool> = valid.iter().map(|b| b.fractured).collect();
    // When the choice differs from the manifest's (flips newly chosen, or a manifest written
    // with flips that validation no longer prefers), the classifier alone gets a calibration
    // fitted to the chosen score (Platt on validation, as `eval` fits the manifest's) and
    // thresholds chosen on it.
    let recalibration = match tta != c.manifest.test_time_hflip {
        true => Some(
            Calibration::fit_platt(&valid.iter().map(score).collect::<Vec<_>>(), &labels)
                .context("cannot recalibrate the classifier on validation")?,
        ),
        false => None,
    };
    let (mut valid, mut test) = (valid, test);
    if let Some(cal) = recalibration {
        for b in valid.iter_mut().chain(test.iter_mut()) {
            b.classifier = cal.apply(score(b));
        }
    }
    let vc: Vec<Probability> = valid.iter().map(score).collect();
    let vd: Vec<Probability> = valid.iter().map(|b| b.detector_top).collect();
    let weights = Fusion::fit(&vc, &vd, &labels).context("cannot fit the fusion on validation")?;
    let cv = Fusion::cross_validated_log_loss(&vc, &vd, &labels, 5);
    if cv.is_none() {
        tracing::warn!(
            "a validation fold lacks a class: too few images to choose the fusion; it is not kept"
        );
    }
    let fusion_of = |t: Thresholds| Fusion {
        detector_sha256: d.manifest.onnx_sha256.clone(),
        detector: d.manifest.name.clone(),
        classifier_weight: weights[0],
        detector_weight: weights[1],
        bias: weights[2],
        thresholds: t,
        metrics: None,
    };
    let provisional = fusion_of(c.manifest.thresholds);
    let fused = |b: &BothReadings| provisional.probability(score(b), b.detector_top);

    let mut thresholds = BTreeMap::new();
    let mut reports = BTreeMap::new();
    let mut test_parts = Vec::new();
    let mut csv_parts = Vec::new();
    // The classifier as the edge reads it alone: its manifest's calibration and thresholds,
    // or, recalibrated for a changed choice of flips, thresholds chosen on validation.
    let manifest_points = if recalibration.is_some() {
        ChosenThresholds::choose(&preds(&valid, |b| b.classifier))
            .context("validation needs both classes")?
    } else {
        let vp = preds(&valid, |b| b.classifier);
        let mut t = ChosenThresholds::choose(&vp).context("validation needs both classes")?;
        let scored = scored(&vp);
        for (point, threshold) in [
            (&mut t.suspicious, c.manifest.thresholds.suspicious),
            (&mut t.definite, c.manifest.thresholds.definite),
        ] {
            let r = BinaryReport::new(&scored, threshold);
            *point = OperatingPoint {
                threshold,
                sensitivity: r.sensitivity.unwrap_or(f64::NAN),
                specificity: r.specificity.unwrap_or(f64::NAN),
            };
        }
        t
    };
    for (name, mut vp, mut tp, fixed) in [
        (
            "classifier",
            preds(&valid, |b| b.classifier),
            preds(&test, |b| b.classifier),
            Some(manifest_points),
        ),
        (
            "detector",
            preds(&valid, |b| b.detector_top),
            preds(&test, |b| b.detector_top),
            None,
        ),
        ("fusion", preds(&valid, fused), preds(&test, fused), None),
    ] {
        if name == "detector" {
            // The top box score is not a probability of a fracture in the image: Platt on
            // validation makes its ECE comparable (the ranking is unchanged).
            calibrate(&mut vp, &mut [&mut tp]);
        }
        let t = match fixed {
            Some(t) => t,
            None => ChosenThresholds::choose(&vp).context("validation needs both classes")?,
        };
        reports.insert(
            name.to_owned(),
            [
                SplitReport::new(SplitPart::Valid, &vp, &t),
                SplitReport::new(SplitPart::Test, &tp, &t).with_intervals(&tp, &t),
            ],
        );
        thresholds.insert(name.to_owned(), t);
        csv_parts.push((format!("valid-{name}"), vp));
        test_parts.push((name.to_owned(), tp));
    }
    let kept = cv.is_some_and(|(f, c)| f < c) && weights[0] > 0.0 && weights[1] > 0.0;
    let report = FuseReport {
        classifier: c.manifest.name.clone(),
        detector: d.manifest.name.clone(),
        weights,
        cv_log_loss_fusion: cv.map(|c| c.0),
        cv_log_loss_classifier: cv.map(|c| c.1),
        kept,
        thresholds,
        reports,
        hflip,
        failures,
    };

    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("fusion.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut all: Vec<(String, Vec<Prediction>)> = csv_parts;
    all.extend(
        test_parts
            .iter()
            .map(|(n, p)| (format!("test-{n}"), p.clone())),
    );
    let refs: Vec<(&str, &[Prediction])> = all
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    write_predictions(&o.out.join("predictions.csv"), &refs)?;
    let refs: Vec<(&str, &[Prediction])> = test_parts
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_slice()))
        .collect();
    if let Err(e) = crate::plots::evaluation_plots(
        &o.out,
        &crate::classify::eval::scored_parts(&refs),
        report.thresholds["fusion"].definite.threshold,
    ) {
        tracing::warn!("{}: could not draw the figures: {e}", o.out.display());
    }

    if o.write {
        let mut m = c.manifest.clone();
        if let Some(cal) = recalibration {
            let t = &report.thresholds["classifier"];
            m.test_time_hflip = tta;
            m.probability_calibration = Some(cal);
            m.thresholds = Thresholds {
                suspicious: t.suspicious.threshold,
                definite: t.definite.threshold,
            };
            m.metrics = Some(report.reports["classifier"][1].test_metrics());
        }
        if kept {
            let t = &report.thresholds["fusion"];
            let mut f = fusion_of(Thresholds {
                suspicious: t.suspicious.threshold,
                definite: t.definite.threshold,
            });
            f.metrics = Some(report.reports["fusion"][1].test_metrics());
            m.fusion = Some(f);
        } else {
            m.fusion = None;
        }
        let (reading, t, valid_preds) = match &m.fusion {
            Some(f) => ("fusion", f.thresholds, preds(&valid, fused)),
            None => ("classifier", m.thresholds, preds(&valid, |b| b.classifier)),
        };
        let refused = m
            .applicability
            .as_ref()
            .map_or(0.0, |a| a.fitted.valid_refused);
        m.expected = Some(expected(reading, &valid_preds, t, refused, m.prevalence));
        save_manifest(&o.classifier, &m)?;
    }
    Ok(report)
}

/// The deployment prevalences the drift watch allows a unit by default: from a quiet clinic's
/// case mix to an emergency department's (FracAtlas itself is 0.18).
pub const PREVALENCE_RANGE: [f64; 2] = [0.10, 0.40];

/// How the reading behaved on validation (`preds`, read at `t`), per class, for the fleet's
/// drift watch; `not_applicable` is the share the scope check refused there.
pub fn expected(
    reading: &str,
    preds: &[Prediction],
    t: Thresholds,
    not_applicable: f64,
    prevalence: Option<Prevalence>,
) -> Expected {
    // What the unit reports: corrected to the deployment prevalence when the manifest says so.
    let shift = |p: Probability| prevalence.map_or(p, |at| at.apply(p));
    let t = t.at(prevalence);
    let class = |fractured: bool| {
        let p: Vec<f64> = preds
            .iter()
            .filter(|x| x.fractured == fractured)
            .map(|x| shift(x.probability).get())
            .collect();
        let n = p.len().max(1) as f64;
        let mean = p.iter().sum::<f64>() / n;
        let at = |th: Probability| p.iter().filter(|&&v| v >= th.get()).count() as f64 / n;
        ClassBehaviour {
            n: p.len(),
            positive: at(t.suspicious),
            fracture: at(t.definite),
            mean_probability: mean,
            sd_probability: (p.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt(),
        }
    };
    Expected {
        reading: reading.to_owned(),
        fractured: class(true),
        not_fractured: class(false),
        not_applicable,
        prevalence: PREVALENCE_RANGE,
    }
}

/// The rows of `split` (`valid-fusion`, `test-classifier`, …) of a `fuse` run's
/// `predictions.csv`, which must hold both classes.
fn prediction_rows(predictions: &Path, split: &str) -> anyhow::Result<Vec<Prediction>> {
    let mut rows = Vec::new();
    let mut r = csv::Reader::from_path(predictions)
        .with_context(|| format!("{}: cannot read", predictions.display()))?;
    for rec in r.records() {
        let rec = rec?;
        if rec.get(0) == Some(split) {
            rows.push(Prediction {
                id: rec.get(1).unwrap_or_default().to_owned(),
                fractured: rec.get(2) == Some("1"),
                probability: Probability::new(rec.get(3).unwrap_or_default().parse()?)?,
            });
        }
    }
    anyhow::ensure!(
        rows.iter().any(|p| p.fractured) && rows.iter().any(|p| !p.fractured),
        "{}: no {split} rows with both classes; run `fv-train fuse` for this classifier",
        predictions.display()
    );
    Ok(rows)
}

/// The reading a classifier ships with (the fusion when it has one) and its thresholds.
fn shipped_reading(m: &Manifest) -> (&'static str, Thresholds) {
    match &m.fusion {
        Some(f) => ("fusion", f.thresholds),
        None => ("classifier", m.thresholds),
    }
}

/// Writes into the classifier's manifest the `expected` behaviour of the reading it ships
/// with (the fusion when it has one), from the validation rows of a `fuse` run's
/// `predictions.csv`, at the manifest's deployment prevalence when it has one.
pub fn write_expected(classifier: &Path, predictions: &Path) -> anyhow::Result<Expected> {
    let found = Found::open(classifier)?;
    let mut m = found.manifest;
    let (reading, t) = shipped_reading(&m);
    let rows = prediction_rows(predictions, &format!("valid-{reading}"))?;
    let refused = m
        .applicability
        .as_ref()
        .map_or(0.0, |a| a.fitted.valid_refused);
    let e = expected(reading, &rows, t, refused, m.prevalence);
    m.expected = Some(e.clone());
    save_manifest(classifier, &m)?;
    Ok(e)
}

/// The calibration at the clinic's prevalence (`fv-train expect --prevalence`): ECE on test,
/// weighted to each prevalence, before and after the prior correction, with 95 % bootstrap
/// intervals.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrevalenceReport {
    /// The reading corrected (`fusion` or `classifier`).
    pub reading: String,
    /// The correction written into the manifest.
    pub prevalence: Prevalence,
    /// Test images, fractured and not.
    pub test_n: [usize; 2],
    /// ECE (10 bins) on test weighted to `prevalence.deployment`, as the probability was
    /// reported before (`[value, low, high]`).
    pub ece_at_deployment_before: [f64; 3],
    /// The same for the corrected probability.
    pub ece_at_deployment_after: [f64; 3],
    /// ECE on test at its own composition, before and after.
    pub ece_at_test_composition: [f64; 2],
}

/// Sets the classifier's deployment prevalence: the fitted one is the share of fractured
/// images among the validation rows of a `fuse` run's `predictions.csv` (where calibration,
/// fusion and thresholds were fitted), `deployment` the stream's. Rewrites `expected` at the
/// new prevalence and reports the test ECE weighted to it, before and after.
pub fn write_prevalence(
    classifier: &Path,
    predictions: &Path,
    deployment: f64,
) -> anyhow::Result<PrevalenceReport> {
    use fv_core::metrics::classification::{
        bootstrap_interval, expected_calibration_error, expected_calibration_error_at,
    };
    let found = Found::open(classifier)?;
    let mut m = found.manifest;
    let (reading, _) = shipped_reading(&m);
    let valid = prediction_rows(predictions, &format!("valid-{reading}"))?;
    let test = prediction_rows(predictions, &format!("test-{reading}"))?;
    let fitted = valid.iter().filter(|p| p.fractured).count() as f64 / valid.len() as f64;
    let at = Prevalence::new(fitted, deployment)?;
    let before = scored(&test);
    let after: Vec<Scored> = before
        .iter()
        .map(|s| Scored {
            score: at.apply(s.score),
            positive: s.positive,
        })
        .collect();
    let ece = |s: &[Scored]| expected_calibration_error_at(s, 10, deployment);
    let with_interval = |s: &[Scored]| -> anyhow::Result<[f64; 3]> {
        let v = ece(s).context("test needs both classes")?;
        let (lo, hi) = bootstrap_interval(s, ece, 2000, 17).context("test needs both classes")?;
        Ok([v, lo, hi])
    };
    let plain = |s: &[Scored]| expected_calibration_error(s, 10).unwrap_or(f64::NAN);
    let report = PrevalenceReport {
        reading: reading.to_owned(),
        prevalence: at,
        test_n: [
            test.iter().filter(|p| p.fractured).count(),
            test.iter().filter(|p| !p.fractured).count(),
        ],
        ece_at_deployment_before: with_interval(&before)?,
        ece_at_deployment_after: with_interval(&after)?,
        ece_at_test_composition: [plain(&before), plain(&after)],
    };
    m.prevalence = Some(at);
    save_manifest(classifier, &m)?;
    // The drift watch's expectation follows what the unit now reports.
    write_expected(classifier, predictions)?;
    Ok(report)
}

/// The shipped reading's test figures (`fv-train intervals`), from a `fuse` run's
/// `predictions.csv`, at the manifest's thresholds (on the scale they were fitted on), each
/// with its bootstrap interval.
pub fn test_intervals(classifier: &Path, predictions: &Path) -> anyhow::Result<Vec<WithInterval>> {
    let m = Found::open(classifier)?.manifest;
    let (reading, figures) = shipped_intervals(&m, predictions)?;
    Ok(named(reading, figures))
}

fn named(reading: &str, figures: Vec<WithInterval>) -> Vec<WithInterval> {
    figures
        .into_iter()
        .map(|f| WithInterval {
            name: format!("{reading} {}", f.name),
            ..f
        })
        .collect()
}

fn shipped_intervals(
    m: &Manifest,
    predictions: &Path,
) -> anyhow::Result<(&'static str, Vec<WithInterval>)> {
    let (reading, t) = shipped_reading(m);
    let test = scored(&prediction_rows(predictions, &format!("test-{reading}"))?);
    let figures = with_intervals(&test, t.suspicious, t.definite);
    anyhow::ensure!(!figures.is_empty(), "test needs both classes");
    Ok((reading, figures))
}

/// Writes [`test_intervals`] into the classifier's manifest beside the test figures it
/// carries for its shipped reading (`roc_auc_interval_low`, ..., as the detector's manifest
/// names them), once each figure the predictions give is checked to be the manifest's own:
/// intervals from another model's predictions would be a wrong claim. The figures come back
/// named as [`test_intervals`] names them.
pub fn write_intervals(classifier: &Path, predictions: &Path) -> anyhow::Result<Vec<WithInterval>> {
    let mut m = Found::open(classifier)?.manifest;
    let (reading, figures) = shipped_intervals(&m, predictions)?;
    let metrics = match reading {
        "fusion" => m.fusion.as_mut().and_then(|f| f.metrics.as_mut()),
        _ => m.metrics.as_mut(),
    }
    .filter(|t| t.split == SplitPart::Test.to_string())
    .with_context(|| {
        format!(
            "{}: carries no test figures for its {reading} reading; write them with `fv-train fuse --write`",
            classifier.display()
        )
    })?;
    for f in &figures {
        let carried = metrics.values.get(&f.name).copied();
        // The CSV holds six decimals: a figure may move in the fifth.
        anyhow::ensure!(
            carried.is_some_and(|v| (v - f.value).abs() < 1e-3),
            "{}: its {reading} {} is {carried:?} where {} gives {:.4}: these are not the \
             predictions of this manifest's models; give the `fuse` run that wrote it",
            classifier.display(),
            f.name,
            predictions.display(),
            f.value
        );
        metrics
            .values
            .insert(format!("{}_interval_low", f.name), f.interval[0]);
        metrics
            .values
            .insert(format!("{}_interval_high", f.name), f.interval[1]);
    }
    save_manifest(classifier, &m)?;
    Ok(named(reading, figures))
}

/// A classifier run's test figures (`fv-train intervals --run`), from its own evaluation
/// (`RUN/predictions.csv`, no mirror view, no fusion) at the thresholds that evaluation chose
/// on validation (`RUN/metrics.json`), each with its bootstrap interval.
pub fn run_intervals(run: &Path) -> anyhow::Result<Vec<WithInterval>> {
    let m = crate::classify::eval::ClassifyMetrics::read(run)?;
    let test = scored(&prediction_rows(&run.join("predictions.csv"), "test")?);
    let t = &m.thresholds;
    Ok(with_intervals(
        &test,
        t.suspicious.threshold,
        t.definite.threshold,
    ))
}

/// A table for the terminal and RESULTS.md.
pub fn summary_table(r: &FuseReport) -> String {
    let mut s = String::from(
        "| reading (test) | ROC-AUC | PR-AUC | sens / spec at suspicious | sens / spec at definite | ECE |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for name in ["classifier", "detector", "fusion"] {
        let [auc, ap, ece, sus_sens, sus_spec, def_sens, def_spec] =
            r.reports[name][1].headline("–");
        s += &format!(
            "| {name} | {auc} | {ap} | {sus_sens} / {sus_spec} | {def_sens} / {def_spec} | {ece} |\n"
        );
    }
    s += &format!(
        "\nfusion weights (classifier, detector, bias): {:.3}, {:.3}, {:.3}; 5-fold validation log loss {} vs classifier alone {}: {}\n",
        r.weights[0],
        r.weights[1],
        r.weights[2],
        r.cv_log_loss_fusion.map_or("–".into(), |v| format!("{v:.4}")),
        r.cv_log_loss_classifier.map_or("–".into(), |v| format!("{v:.4}")),
        if r.kept { "fusion kept" } else { "fusion not kept" }
    );
    let h = &r.hflip;
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
    s += &format!(
        "horizontal-flip TTA of the classifier (as is → mean with the mirror): validation ROC-AUC {} → {}, 5-fold log loss alone {} → {}, fused {} → {}; test ROC-AUC {} → {}: {}\n",
        f(h.valid_roc_auc[0]),
        f(h.valid_roc_auc[1]),
        f(h.cv_log_loss_classifier[0]),
        f(h.cv_log_loss_classifier[1]),
        f(h.cv_log_loss_fusion[0]),
        f(h.cv_log_loss_fusion[1]),
        f(h.test_roc_auc[0]),
        f(h.test_roc_auc[1]),
        if h.helps { "validation prefers it" } else { "validation does not prefer it" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::eval::ClassifyMetrics;

    #[test]
    fn intervals_are_written_beside_the_manifests_own_figures_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/efficientnet-lite0-fracatlas.json");
        let mut m = Manifest::from_path(&shipped).unwrap();
        // Sixty-fourths: the CSV's six decimals hold them exactly, ties included.
        let test: Vec<Prediction> = (0..90)
            .map(|i| Prediction {
                id: format!("IMG{i}.jpg"),
                fractured: i % 3 == 0,
                probability: Probability::new(
                    ((if i % 3 == 0 { 13 } else { 0 }) + i % 20) as f64 / 64.0,
                )
                .unwrap(),
            })
            .collect();
        let t = ChosenThresholds::choose(&test).unwrap();
        m.fusion = None;
        m.thresholds = Thresholds {
            suspicious: t.suspicious.threshold,
            definite: t.definite.threshold,
        };
        m.metrics = Some(SplitReport::new(SplitPart::Test, &test, &t).test_metrics());
        let json = dir.path().join("classifier.json");
        let write_manifest =
            |m: &Manifest| std::fs::write(&json, serde_json::to_string_pretty(m).unwrap()).unwrap();
        write_manifest(&m);
        let ours = dir.path().join("ours.csv");
        write_predictions(&ours, &[("test-classifier", &test)]).unwrap();

        let figures = write_intervals(&json, &ours).unwrap();
        let written = Manifest::from_path(&json).unwrap().metrics.unwrap().values;
        let before = m.metrics.as_ref().unwrap();
        assert_eq!(written.len(), before.values.len() + 2 * figures.len());
        for f in &figures {
            let name = f.name.trim_start_matches("classifier ");
            // Bit for bit: the workspace's serde_json reads floats back exactly.
            assert_eq!(written[name], before.values[name]);
            assert_eq!(written[&format!("{name}_interval_low")], f.interval[0]);
            assert_eq!(written[&format!("{name}_interval_high")], f.interval[1]);
            assert!(
                f.interval[0] <= f.value && f.value <= f.interval[1],
                "{f:?}"
            );
        }

        // Another model's predictions do not lend the manifest their intervals.
        write_manifest(&m);
        let unwritten = std::fs::read(&json).unwrap();
        let other = dir.path().join("other.csv");
        let moved: Vec<Prediction> = test
            .iter()
            .map(|p| Prediction {
                probability: Probability::new(if p.fractured { 0.2 } else { 0.25 }).unwrap(),
                ..p.clone()
            })
            .collect();
        write_predictions(&other, &[("test-classifier", &moved)]).unwrap();
        let e = write_intervals(&json, &other).unwrap_err().to_string();
        assert!(
            e.contains("not the predictions") && e.contains("roc_auc"),
            "{e}"
        );
        assert_eq!(std::fs::read(&json).unwrap(), unwritten);

        // Nor does a manifest without test figures get bare intervals.
        m.metrics = None;
        write_manifest(&m);
        let e = write_intervals(&json, &ours).unwrap_err().to_string();
        assert!(e.contains("fuse --write"), "{e}");
    }

    #[test]
    fn a_classifier_runs_test_figures_come_with_intervals_at_its_own_thresholds() {
        let run = tempfile::tempdir().unwrap();
        let preds = |shift: f64| -> Vec<Prediction> {
            (0..60)
                .map(|i| Prediction {
                    id: format!("IMG{i}.jpg"),
                    fractured: i % 3 == 0,
                    probability: Probability::new(
                        (if i % 3 == 0 { 0.3 } else { 0.0 }) + (i % 20) as f64 * 0.03 + shift,
                    )
                    .unwrap(),
                })
                .collect()
        };
        let (valid, test) = (preds(0.0), preds(0.01));
        let t = ChosenThresholds::choose(&valid).unwrap();
        let metrics = ClassifyMetrics {
            model: "efficientnet-lite0".into(),
            checkpoint: "best.safetensors".into(),
            valid: SplitReport::new(SplitPart::Valid, &valid, &t),
            test: Some(SplitReport::new(SplitPart::Test, &test, &t)),
            thresholds: t.clone(),
            load_failures: Vec::new(),
            calibration: None,
            uncalibrated_ece: Vec::new(),
        };
        let write_metrics = |m: &ClassifyMetrics| {
            std::fs::write(
                run.path().join("metrics.json"),
                serde_json::to_string(m).unwrap(),
            )
            .unwrap()
        };
        write_metrics(&metrics);
        write_predictions(
            &run.path().join("predictions.csv"),
            &[("valid", &valid), ("test", &test)],
        )
        .unwrap();
        let figures = run_intervals(run.path()).unwrap();
        // The test rows as the file holds them (six decimals).
        let read = scored(&prediction_rows(&run.path().join("predictions.csv"), "test").unwrap());
        assert_eq!(read.len(), test.len());
        assert_eq!(
            figures,
            with_intervals(&read, t.suspicious.threshold, t.definite.threshold)
        );
        assert_eq!(figures[0].name, "roc_auc");
        assert_eq!(Some(figures[0].value), roc_auc(&read));

        // Other thresholds in metrics.json move the operating points' figures.
        let mut other = metrics;
        other.thresholds.definite.threshold = Probability::new(0.5).unwrap();
        write_metrics(&other);
        assert_ne!(run_intervals(run.path()).unwrap()[4], figures[4]);

        let e = run_intervals(&run.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.json") && e.contains("fv-train eval"),
            "{e}"
        );
    }
}
