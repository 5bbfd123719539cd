//! Evaluation a clinician can trust: metrics at the natural class balance, with operating
//! thresholds chosen on the validation split only and then applied, unchanged, to test.

use super::train::TrainConfig;
use crate::data::classify::{batch_tensor, load_planes, Plane, Sample};
use crate::data::SplitPart;
use crate::models::Classifier;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use fv_core::calibration::Calibration;
use fv_core::manifest::TestMetrics;
use fv_core::metrics::classification::{
    average_precision, bootstrap_interval, expected_calibration_error, roc_auc, sensitivity_at,
    specificity_at, threshold_for_sensitivity, threshold_for_specificity, BinaryReport,
    OperatingPoint, Scored,
};
use fv_core::Probability;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

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

/// One image's prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// FracAtlas id.
    pub id: String,
    /// Fractured (truth).
    pub fractured: bool,
    /// The model's probability of a fracture.
    pub probability: Probability,
}

/// Scores `samples` with `model`; images that fail to load are listed, not scored.
pub fn score(
    model: &Classifier,
    samples: &[Sample],
    config: &TrainConfig,
    device: &burn::tensor::Device,
) -> (Vec<Prediction>, Vec<String>) {
    let (loaded, failed) = load_planes(samples, config.image_size);
    let planes: Vec<&Plane> = loaded.iter().map(|(_, p)| p).collect();
    let probs = predict(model, &planes, config, device);
    let preds = loaded
        .iter()
        .zip(probs)
        .map(|((s, _), p)| Prediction {
            id: s.id.clone(),
            fractured: s.label,
            probability: p,
        })
        .collect();
    (
        preds,
        failed
            .into_iter()
            .map(|f| format!("{}: {}", f.id, f.message))
            .collect(),
    )
}

/// Fits Platt scaling on the validation predictions (raw probabilities) and applies it to
/// them and to `others`, in place, through fv-core's [`Calibration::apply`], the function
/// the edge calls. Returns the calibration (none when it cannot be fitted) and the ECE of
/// each list before it, validation first.
pub fn calibrate(
    valid: &mut [Prediction],
    others: &mut [&mut Vec<Prediction>],
) -> (Option<Calibration>, Vec<Option<f64>>) {
    let ece = |p: &[Prediction]| expected_calibration_error(&scored(p), 10);
    let mut before = vec![ece(valid)];
    before.extend(others.iter().map(|o| ece(o)));
    let raw: Vec<Probability> = valid.iter().map(|p| p.probability).collect();
    let labels: Vec<bool> = valid.iter().map(|p| p.fractured).collect();
    let c = Calibration::fit_platt(&raw, &labels);
    if let Some(c) = c {
        for p in valid
            .iter_mut()
            .chain(others.iter_mut().flat_map(|o| o.iter_mut()))
        {
            p.probability = c.apply(p.probability);
        }
    }
    (c, before)
}

/// Each split's predictions as fv-core's metrics take them.
pub fn scored_parts<'a>(parts: &[(&'a str, &[Prediction])]) -> Vec<(&'a str, Vec<Scored>)> {
    parts.iter().map(|(n, p)| (*n, scored(p))).collect()
}

/// The predictions as fv-core's metrics take them.
pub fn scored(preds: &[Prediction]) -> Vec<Scored> {
    preds
        .iter()
        .map(|p| Scored {
            score: p.probability,
            positive: p.fractured,
        })
        .collect()
}

/// Thresholds chosen on validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChosenThresholds {
    /// Sensitivity ≥ 0.95 on validation: flag for a second look.
    pub suspicious: OperatingPoint,
    /// Specificity ≥ 0.95 on validation: report a fracture.
    pub definite: OperatingPoint,
    /// Specificity ≥ 0.90 on validation: the goal's operating point.
    pub specificity_90: OperatingPoint,
}

impl ChosenThresholds {
    /// Chooses the thresholds on validation predictions. `None` without both classes.
    pub fn choose(valid: &[Prediction]) -> Option<Self> {
        let s = scored(valid);
        let mut suspicious = threshold_for_sensitivity(&s, 0.95)?;
        let definite = threshold_for_specificity(&s, 0.95)?;
        // A model that separates validation well can reach sensitivity 0.95 above the
        // threshold that first gives specificity 0.95; `suspicious` then comes down to
        // `definite` (a lower threshold only adds sensitivity), so that the pair keeps its
        // order, which the edge requires.
        if suspicious.threshold > definite.threshold {
            suspicious = definite;
        }
        Some(ChosenThresholds {
            suspicious,
            definite,
            specificity_90: threshold_for_specificity(&s, 0.90)?,
        })
    }
}

/// The metrics of one split at the chosen thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// `valid` or `test`.
    pub split: SplitPart,
    /// Fractured images scored.
    pub n_fractured: usize,
    /// Non-fractured images scored.
    pub n_non_fractured: usize,
    /// At the `suspicious` threshold.
    pub at_suspicious: BinaryReport,
    /// At the `definite` threshold.
    pub at_definite: BinaryReport,
    /// At the validation specificity-0.90 threshold.
    pub at_specificity_90: BinaryReport,
    /// At 0.5, for comparison with papers that report accuracy.
    pub at_0_5: BinaryReport,
    /// The headline figures with their 95 % intervals ([`SplitReport::with_intervals`]; test).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<WithInterval>,
}

/// One figure with its 95 % stratified bootstrap interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WithInterval {
    /// The figure, named as in a manifest's test metrics (`roc_auc`, `sensitivity@definite`).
    pub name: String,
    /// On the whole split.
    pub value: f64,
    /// 2.5th and 97.5th percentiles over 2 000 stratified resamples.
    pub interval: [f64; 2],
}

/// ROC-AUC, PR-AUC and the sensitivity and specificity at `suspicious` and `definite`, each
/// with its 95 % interval (2 000 resamples stratified by class, seed 17); empty unless both
/// classes are present.
pub fn with_intervals(
    s: &[Scored],
    suspicious: Probability,
    definite: Probability,
) -> Vec<WithInterval> {
    type Figure<'a> = (&'a str, Box<dyn Fn(&[Scored]) -> Option<f64>>);
    let figures: Vec<Figure> = vec![
        ("roc_auc", Box::new(roc_auc)),
        ("pr_auc", Box::new(average_precision)),
        (
            "sensitivity@suspicious",
            Box::new(sensitivity_at(suspicious)),
        ),
        (
            "specificity@suspicious",
            Box::new(specificity_at(suspicious)),
        ),
        ("sensitivity@definite", Box::new(sensitivity_at(definite))),
        ("specificity@definite", Box::new(specificity_at(definite))),
    ];
    figures
        .into_iter()
        .map_while(|(name, f)| {
            let value = f(s)?;
            let (lo, hi) = bootstrap_interval(s, &f, 2000, 17)?;
            Some(WithInterval {
                name: name.to_owned(),
                value,
                interval: [lo, hi],
            })
        })
        .collect()
}

impl SplitReport {
    /// The report for `preds` at `thresholds`.
    pub fn new(split: SplitPart, preds: &[Prediction], t: &ChosenThresholds) -> Self {
        let s = scored(preds);
        let n_fractured = preds.iter().filter(|p| p.fractured).count();
        SplitReport {
            split,
            n_fractured,
            n_non_fractured: preds.len() - n_fractured,
            at_suspicious: BinaryReport::new(&s, t.suspicious.threshold),
            at_definite: BinaryReport::new(&s, t.definite.threshold),
            at_specificity_90: BinaryReport::new(&s, t.specificity_90.threshold),
            at_0_5: BinaryReport::new(&s, Probability::new(0.5).expect("0.5 is a probability")),
            intervals: Vec::new(),
        }
    }

    /// The report with its headline figures' intervals (what a test report carries).
    pub fn with_intervals(mut self, preds: &[Prediction], t: &ChosenThresholds) -> Self {
        self.intervals =
            with_intervals(&scored(preds), t.suspicious.threshold, t.definite.threshold);
        self
    }

    /// The headline figures, as text with three decimals (`missing` where undefined): ROC-AUC,
    /// PR-AUC, ECE, then sensitivity and specificity at `suspicious` and at `definite`.
    pub fn headline(&self, missing: &str) -> [String; 7] {
        [
            self.at_0_5.roc_auc,
            self.at_0_5.pr_auc,
            self.at_0_5.ece,
            self.at_suspicious.sensitivity,
            self.at_suspicious.specificity,
            self.at_definite.sensitivity,
            self.at_definite.specificity,
        ]
        .map(|v| v.map_or(missing.to_owned(), |v| format!("{v:.3}")))
    }

    /// The metrics a manifest carries for this split.
    pub fn test_metrics(&self) -> TestMetrics {
        let mut values = BTreeMap::new();
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v {
                values.insert(k.to_owned(), v);
            }
        };
        put("roc_auc", self.at_0_5.roc_auc);
        put("pr_auc", self.at_0_5.pr_auc);
        put("ece", self.at_0_5.ece);
        put("sensitivity@suspicious", self.at_suspicious.sensitivity);
        put("specificity@suspicious", self.at_suspicious.specificity);
        put("sensitivity@definite", self.at_definite.sensitivity);
        put("specificity@definite", self.at_definite.specificity);
        put("precision@definite", self.at_definite.precision);
        put(
            "balanced_accuracy@definite",
            self.at_definite.balanced_accuracy,
        );
        // Named as the detector's manifest names its bounds (`map50_interval_low`).
        for f in &self.intervals {
            values.insert(format!("{}_interval_low", f.name), f.interval[0]);
            values.insert(format!("{}_interval_high", f.name), f.interval[1]);
        }
        TestMetrics {
            split: self.split.to_string(),
            n_per_class: BTreeMap::from([
                (fv_core::reading::FRACTURED.to_owned(), self.n_fractured),
                (
                    fv_core::reading::NOT_FRACTURED.to_owned(),
                    self.n_non_fractured,
                ),
            ]),
            values,
        }
    }
}

/// `RUN/metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifyMetrics {
    /// The model name.
    pub model: String,
    /// Which checkpoint was evaluated.
    pub checkpoint: String,
    /// Thresholds, chosen on validation.
    pub thresholds: ChosenThresholds,
    /// Validation metrics (where the thresholds were chosen: optimistic by construction).
    pub valid: SplitReport,
    /// Test metrics: the figures to report.
    pub test: Option<SplitReport>,
    /// Images that could not be scored.
    pub load_failures: Vec<String>,
    /// The calibration fitted on validation and applied to every probability above (and
    /// written into the manifest); `None` for runs evaluated before calibration existed.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// ECE of the raw probabilities, validation and test, for comparison.
    #[serde(default)]
    pub uncalibrated_ece: Vec<Option<f64>>,
}

impl ClassifyMetrics {
    /// A classifier run's `RUN/metrics.json`, written by its evaluation.
    pub fn read(run: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = run.join("metrics.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read; evaluate the run first (`fv-train eval --run {}`)",
                path.display(),
                run.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a classifier run's metrics", path.display()))
    }
}

/// Writes predictions as CSV: `split,id,fractured,probability`.
pub fn write_predictions(path: &Path, parts: &[(&str, &[Prediction])]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "split,id,fractured,probability")?;
    for (split, preds) in parts {
        for p in *preds {
            writeln!(
                f,
                "{split},{},{},{:.6}",
                p.id,
                p.fractured as u8,
                p.probability.get()
            )?;
        }
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_report_carries_each_headline_figure_inside_its_interval() {
        // Overlapping classes: fractures score 0.3–0.9, the rest 0.0–0.6.
        let preds: Vec<Prediction> = (0..60)
            .map(|i| {
                let fractured = i % 3 == 0;
                let base = if fractured { 0.3 } else { 0.0 };
                Prediction {
                    id: i.to_string(),
                    fractured,
                    probability: Probability::new(base + (i % 20) as f64 * 0.03).unwrap(),
                }
            })
            .collect();
        let t = ChosenThresholds::choose(&preds).unwrap();
        let r = SplitReport::new(SplitPart::Test, &preds, &t).with_intervals(&preds, &t);
        let names: Vec<&str> = r.intervals.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "roc_auc",
                "pr_auc",
                "sensitivity@suspicious",
                "specificity@suspicious",
                "sensitivity@definite",
                "specificity@definite"
            ]
        );
        assert_eq!(r.intervals[0].value, r.at_0_5.roc_auc.unwrap());
        for f in &r.intervals {
            let [lo, hi] = f.interval;
            assert!(lo <= f.value && f.value <= hi, "{f:?}");
        }
        // The manifest's test metrics carry them, as the detector's do.
        let values = r.test_metrics().values;
        assert_eq!(values["roc_auc_interval_low"], r.intervals[0].interval[0]);
        assert_eq!(
            values["specificity@definite_interval_high"],
            r.intervals[5].interval[1]
        );
        // One class alone has no ROC-AUC and so no intervals.
        let one: Vec<Prediction> = preds.into_iter().filter(|p| p.fractured).collect();
        assert!(SplitReport::new(SplitPart::Test, &one, &t)
            .with_intervals(&one, &t)
            .intervals
            .is_empty());
    }

    #[test]
    fn thresholds_keep_their_order_on_a_separated_validation_split() {
        // Every fracture scores above every normal image: sensitivity 0.95 is reached at
        // the lowest fracture's score, above the first threshold with specificity 0.95.
        let preds: Vec<Prediction> = (0..40)
            .map(|i| Prediction {
                id: i.to_string(),
                fractured: i >= 20,
                probability: Probability::new(i as f64 / 40.0).unwrap(),
            })
            .collect();
        let t = ChosenThresholds::choose(&preds).unwrap();
        assert!(t.suspicious.threshold <= t.definite.threshold, "{t:?}");
        assert!(
            t.suspicious.sensitivity >= 0.95 && t.definite.specificity >= 0.95,
            "{t:?}"
        );
    }
}
