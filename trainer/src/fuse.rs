//! `fv-train fuse`: one decision from both models. Reads every validation and test image of a
//! classifier run's split as fv-edge does (fv-core's decoder and preprocessing, the exported
//! ONNX files run by tract, fv-core's [`image_reading`]), fits the fusion of the classifier's
//! and the detector's scores on validation, chooses its thresholds there, and reports on test
//! the classifier alone, the detector alone (its top box score as the image's score) and the
//! fusion.
//!
//! The fusion is kept only when it beats the classifier alone out of fold on validation
//! (5-fold cross-validated log loss): with 245 validation images, a third weight is not free.

use crate::classify::eval::{
    calibrate, scored, write_predictions, ChosenThresholds, Prediction, SplitReport,
};
use crate::classify::{split_samples, RunData};
use crate::data::classify::Sample;
use crate::data::{FracAtlas, SplitPart};
use anyhow::Context as _;
use fv_core::imaging::{decode_file, DecodeOptions};
use fv_core::manifest::{Manifest, Thresholds};
use fv_core::metrics::classification::{BinaryReport, OperatingPoint};
use fv_core::preprocess::preprocess;
use fv_core::reading::{classifier_raw, detector_top_score, image_reading, Fusion};
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
    /// The classifier's raw probability.
    pub classifier_raw: Probability,
    /// The classifier's probability as the edge reports it alone (its manifest's calibration).
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
    /// Images that could not be read.
    pub failures: Vec<String>,
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
    let run = |m: &Loaded| -> anyhow::Result<Vec<f32>> {
        let pre = preprocess(&decoded.image, &m.manifest.input);
        Ok(m.engine
            .run_values(&pre.tensor.data)?
            .into_iter()
            .next()
            .unwrap_or_default())
    };
    let (co, dout) = (run(c)?, run(d)?);
    Ok(BothReadings {
        id: s.id.clone(),
        fractured: s.label,
        classifier_raw: classifier_raw(&c.manifest, &co)?,
        classifier: image_reading(&c.manifest, &co, None)?.probability,
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
    let run_data: RunData = serde_json::from_str(
        &std::fs::read_to_string(o.run.join("data.json")).with_context(|| {
            format!(
                "{}: no data.json; pass the classifier's run folder",
                o.run.display()
            )
        })?,
    )?;
    let data = FracAtlas::open(&o.data)
        .with_context(|| format!("loading FracAtlas from {}", o.data.display()))?;
    let split = data.classification_split(&run_data.split)?;
    let [_, valid_s, test_s] = split_samples(&data, &split, run_data.limit_per_class);
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

    let labels: Vec<bool> = valid.iter().map(|b| b.fractured).collect();
    let vc: Vec<Probability> = valid.iter().map(|b| b.classifier_raw).collect();
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
    let fused = |b: &BothReadings| provisional.probability(b.classifier_raw, b.detector_top);

    let mut thresholds = BTreeMap::new();
    let mut reports = BTreeMap::new();
    let mut test_parts = Vec::new();
    let mut csv_parts = Vec::new();
    // The classifier as the edge reads it alone: its manifest's calibration and thresholds.
    let manifest_points = {
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
                SplitReport::new(SplitPart::Test, &tp, &t),
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
        &refs,
        report.thresholds["fusion"].definite.threshold,
    ) {
        tracing::warn!("{}: could not draw the figures: {e}", o.out.display());
    }

    if o.write {
        let mut m = c.manifest.clone();
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
        let text = serde_json::to_string_pretty(&m)? + "\n";
        // The edge must accept what is written.
        Manifest::from_json(&text, &o.classifier)?;
        std::fs::write(&o.classifier, text)
            .with_context(|| format!("{}: cannot write", o.classifier.display()))?;
    }
    Ok(report)
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
    s
}
