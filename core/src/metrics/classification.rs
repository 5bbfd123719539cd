//! Binary classification metrics: fractured (positive) against not fractured.
//!
//! An image is called positive when its score is at or above the threshold. Ratios with a
//! zero denominator are `None`, never a silent 0 or NaN: a test set without fractures has no
//! sensitivity.

use crate::Probability;
use serde::{Deserialize, Serialize};

/// One scored image and its truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The model's probability of a fracture.
    pub score: Probability,
    /// Whether the image is fractured.
    pub positive: bool,
}

/// Counts at one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Fractured, called fractured.
    pub tp: u64,
    /// Not fractured, called fractured.
    pub fp: u64,
    /// Not fractured, called not fractured.
    pub tn: u64,
    /// Fractured, called not fractured: the misses that matter most.
    #[serde(rename = "fn")]
    pub fn_: u64,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl Confusion {
    /// Counts the calls at `threshold`.
    pub fn at(samples: &[Scored], threshold: Probability) -> Self {
        let mut c = Confusion::default();
        for s in samples {
            match (s.positive, s.score >= threshold) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    /// Images counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// Fraction called correctly. Misleading on FracAtlas, where 82% are not fractured.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.total())
    }

    /// Mean of sensitivity and specificity.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        Some((self.sensitivity()? + self.specificity()?) / 2.0)
    }

    /// Positive predictive value: of the images called fractured, the fraction that are.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Recall, true positive rate: of the fractured images, the fraction found.
    pub fn sensitivity(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// True negative rate: of the images without fracture, the fraction cleared.
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fp)
    }

    /// Negative predictive value.
    pub fn npv(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fn_)
    }

    /// Harmonic mean of precision and sensitivity (0 when both are 0).
    pub fn f1(&self) -> Option<f64> {
        let denom = 2 * self.tp + self.fp + self.fn_;
        ratio(2 * self.tp, denom)
    }
}

/// A point of the ROC curve: calling positive at `score >= threshold` gives these rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// The threshold; `None` for the origin (nothing called positive).
    pub threshold: Option<Probability>,
    /// False positive rate, 1 − specificity.
    pub fpr: f64,
    /// True positive rate, sensitivity.
    pub tpr: f64,
}

/// Cumulative counts at each distinct score, highest first.
fn sweep(samples: &[Scored]) -> Vec<(Probability, u64, u64)> {
    let mut sorted: Vec<&Scored> = samples.iter().collect();
    sorted.sort_by(|a, b| b.score.get().total_cmp(&a.score.get()));
    let mut out: Vec<(Probability, u64, u64)> = Vec::new();
    let (mut tp, mut fp) = (0, 0);
    for (i, s) in sorted.iter().enumerate() {
        if s.positive {
            tp += 1;
        } else {
            fp += 1;
        }
        // Ties form one point: a threshold cannot split equal scores.
        let last_of_tie = sorted.get(i + 1).is_none_or(|n| n.score != s.score);
        if last_of_tie {
            out.push((s.score, tp, fp));
        }
    }
    out
}

fn class_counts(samples: &[Scored]) -> (u64, u64) {
    let p = samples.iter().filter(|s| s.positive).count() as u64;
    (p, samples.len() as u64 - p)
}

/// The ROC curve, one point per distinct score plus the origin. `None` when either class is
/// missing.
pub fn roc_curve(samples: &[Scored]) -> Option<Vec<RocPoint>> {
    let (p, n) = class_counts(samples);
    if p == 0 || n == 0 {
        return None;
    }
    let mut pts = vec![RocPoint {
        threshold: None,
        fpr: 0.0,
        tpr: 0.0,
    }];
    pts.extend(sweep(samples).into_iter().map(|(t, tp, fp)| RocPoint {
        threshold: Some(t),
        fpr: fp as f64 / n as f64,
        tpr: tp as f64 / p as f64,
    }));
    Some(pts)
}

/// Area under the ROC curve (trapezoidal, ties as one point, as scikit-learn's
/// `roc_auc_score`). `None` when either class is missing.
pub fn roc_auc(samples: &[Scored]) -> Option<f64> {
    let pts = roc_curve(samples)?;
    Some(
        pts.windows(2)
            .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) / 2.0)
            .sum(),
    )
}

/// A point of the precision-recall curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    /// Call positive at `score >= threshold`.
    pub threshold: Probability,
    /// Precision there.
    pub precision: f64,
    /// Recall (sensitivity) there.
    pub recall: f64,
}

/// The precision-recall curve, one point per distinct score, highest threshold first.
/// `None` without positives.
pub fn pr_curve(samples: &[Scored]) -> Option<Vec<PrPoint>> {
    let (p, _) = class_counts(samples);
    if p == 0 {
        return None;
    }
    Some(
        sweep(samples)
            .into_iter()
            .map(|(t, tp, fp)| PrPoint {
                threshold: t,
                precision: tp as f64 / (tp + fp) as f64,
                recall: tp as f64 / p as f64,
            })
            .collect(),
    )
}

/// Area under the precision-recall curve as average precision, `Σ (Rₙ − Rₙ₋₁) Pₙ` over
/// thresholds (scikit-learn's `average_precision_score`; no interpolation, so it does not
/// flatter). `None` without positives.
pub fn average_precision(samples: &[Scored]) -> Option<f64> {
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for pt in pr_curve(samples)? {
        ap += (pt.recall - prev_recall) * pt.precision;
        prev_recall = pt.recall;
    }
    Some(ap)
}

/// One bin of a reliability diagram.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge (exclusive, except for the first bin).
    pub lower: f64,
    /// Upper edge (inclusive).
    pub upper: f64,
    /// Images in the bin.
    pub count: u64,
    /// Mean predicted probability.
    pub mean_predicted: f64,
    /// Observed fraction fractured.
    pub fraction_positive: f64,
}

/// The reliability diagram with `n_bins` equal-width bins on the predicted probability of a
/// fracture (bins as scikit-learn's `calibration_curve(strategy="uniform")`). Empty bins
/// are left out.
pub fn calibration_bins(samples: &[Scored], n_bins: usize) -> Vec<CalibrationBin> {
    let n_bins = n_bins.max(1);
    let mut sum_p = vec![0.0; n_bins];
    let mut pos = vec![0u64; n_bins];
    let mut count = vec![0u64; n_bins];
    for s in samples {
        let p = s.score.get();
        // A score equal to an inner edge falls in the lower bin.
        let bin = (1..n_bins)
            .filter(|&k| (k as f64 / n_bins as f64) < p)
            .count();
        sum_p[bin] += p;
        count[bin] += 1;
        pos[bin] += s.positive as u64;
    }
    (0..n_bins)
        .filter(|&b| count[b] > 0)
        .map(|b| CalibrationBin {
            lower: b as f64 / n_bins as f64,
            upper: (b + 1) as f64 / n_bins as f64,
            count: count[b],
            mean_predicted: sum_p[b] / count[b] as f64,
            fraction_positive: pos[b] as f64 / count[b] as f64,
        })
        .collect()
}

/// Expected calibration error: the count-weighted mean gap between predicted probability
/// and observed frequency over [`calibration_bins`]. `None` for no samples.
pub fn expected_calibration_error(samples: &[Scored], n_bins: usize) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as f64;
    Some(
        calibration_bins(samples, n_bins)
            .iter()
            .map(|b| b.count as f64 / n * (b.fraction_positive - b.mean_predicted).abs())
            .sum(),
    )
}

/// Expected calibration error as it would be on a stream with fraction `prevalence` of
/// fractures: each fractured sample weighs `prevalence / p` and each other `(1 − prevalence)
/// / (1 − p)`, `p` the samples' own share, so that the weighted set has that prevalence with
/// each class as sampled (a clinic's stream at FracAtlas' 18 % from a 23 % test split).
/// `None` without both classes or with `prevalence` outside (0, 1).
pub fn expected_calibration_error_at(
    samples: &[Scored],
    n_bins: usize,
    prevalence: f64,
) -> Option<f64> {
    let n = samples.len() as f64;
    let pos = samples.iter().filter(|s| s.positive).count() as f64;
    if pos == 0.0 || pos == n || !(prevalence > 0.0 && prevalence < 1.0) {
        return None;
    }
    let (w_pos, w_neg) = (prevalence / (pos / n), (1.0 - prevalence) / (1.0 - pos / n));
    let n_bins = n_bins.max(1);
    let (mut w, mut wp, mut wy) = (vec![0.0; n_bins], vec![0.0; n_bins], vec![0.0; n_bins]);
    for s in samples {
        let p = s.score.get();
        let bin = (1..n_bins)
            .filter(|&k| (k as f64 / n_bins as f64) < p)
            .count();
        let weight = if s.positive { w_pos } else { w_neg };
        w[bin] += weight;
        wp[bin] += weight * p;
        wy[bin] += weight * s.positive as u8 as f64;
    }
    let total: f64 = w.iter().sum();
    Some(
        (0..n_bins)
            .filter(|&b| w[b] > 0.0)
            .map(|b| w[b] / total * (wy[b] / w[b] - wp[b] / w[b]).abs())
            .sum(),
    )
}

/// Sensitivity of calling `score >= threshold` fractured (`None` without fractured samples),
/// as a statistic for [`bootstrap_interval`].
pub fn sensitivity_at(threshold: Probability) -> impl Fn(&[Scored]) -> Option<f64> {
    move |s| BinaryReport::new(s, threshold).sensitivity
}

/// Specificity of the same call (`None` without other samples).
pub fn specificity_at(threshold: Probability) -> impl Fn(&[Scored]) -> Option<f64> {
    move |s| BinaryReport::new(s, threshold).specificity
}

/// A 95 % percentile-bootstrap interval of `statistic` over `samples`: `resamples` draws with
/// replacement, stratified by class (each draw keeps the number of fractured and other
/// images, as a split of fixed composition), from a fixed `seed`. `None` when the statistic
/// is undefined on the samples or on most draws.
pub fn bootstrap_interval(
    samples: &[Scored],
    statistic: impl Fn(&[Scored]) -> Option<f64>,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    super::bootstrap_by(samples, |s| s.positive, statistic, resamples, seed)
}

/// A threshold with the rates it gives on the data it was chosen on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// Call fractured at `score >= threshold`.
    pub threshold: Probability,
    /// Sensitivity there.
    pub sensitivity: f64,
    /// Specificity there.
    pub specificity: f64,
}

/// The highest threshold whose sensitivity reaches `target`: the most specific way to miss
/// no more than `1 − target` of the fractures. Choose it on validation data only, and
/// report test metrics at it. `None` without both classes.
pub fn threshold_for_sensitivity(samples: &[Scored], target: f64) -> Option<OperatingPoint> {
    let pts = roc_curve(samples)?;
    // TPR rises along the curve: the first point to reach the target has the highest
    // threshold and lowest FPR.
    let pt = pts
        .iter()
        .skip(1)
        .find(|p| p.tpr >= target - 1e-12)
        .or(pts.last())?;
    Some(OperatingPoint {
        threshold: pt.threshold?,
        sensitivity: pt.tpr,
        specificity: 1.0 - pt.fpr,
    })
}

/// The lowest threshold whose specificity still reaches `target`: the most sensitive way to
/// keep false alarms under `1 − target`. If no threshold reaches it, the highest threshold
/// is returned (most specific). `None` without both classes.
pub fn threshold_for_specificity(samples: &[Scored], target: f64) -> Option<OperatingPoint> {
    let pts = roc_curve(samples)?;
    let pt = pts
        .iter()
        .skip(1)
        .rfind(|p| 1.0 - p.fpr >= target - 1e-12)
        .or(pts.get(1))?;
    Some(OperatingPoint {
        threshold: pt.threshold?,
        sensitivity: pt.tpr,
        specificity: 1.0 - pt.fpr,
    })
}

/// Everything a report shows for a binary classifier at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryReport {
    /// The probability at or above which an image is called fractured.
    pub threshold: Probability,
    /// The counts.
    pub confusion: Confusion,
    /// See [`Confusion::accuracy`].
    pub accuracy: Option<f64>,
    /// See [`Confusion::balanced_accuracy`].
    pub balanced_accuracy: Option<f64>,
    /// See [`Confusion::precision`].
    pub precision: Option<f64>,
    /// See [`Confusion::sensitivity`].
    pub sensitivity: Option<f64>,
    /// See [`Confusion::specificity`].
    pub specificity: Option<f64>,
    /// See [`Confusion::f1`].
    pub f1: Option<f64>,
    /// See [`roc_auc`].
    pub roc_auc: Option<f64>,
    /// See [`average_precision`].
    pub pr_auc: Option<f64>,
    /// See [`expected_calibration_error`], 10 bins.
    pub ece: Option<f64>,
}

impl BinaryReport {
    /// The report at `threshold`.
    pub fn new(samples: &[Scored], threshold: Probability) -> Self {
        let c = Confusion::at(samples, threshold);
        BinaryReport {
            threshold,
            confusion: c,
            accuracy: c.accuracy(),
            balanced_accuracy: c.balanced_accuracy(),
            precision: c.precision(),
            sensitivity: c.sensitivity(),
            specificity: c.specificity(),
            f1: c.f1(),
            roc_auc: roc_auc(samples),
            pr_auc: average_precision(samples),
            ece: expected_calibration_error(samples, 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(score: f64, positive: bool) -> Scored {
        Scored {
            score: Probability::new(score).unwrap(),
            positive,
        }
    }

    #[test]
    fn perfect_and_inverted_rankings() {
        let good = [s(0.9, true), s(0.8, true), s(0.3, false), s(0.1, false)];
        assert_eq!(roc_auc(&good), Some(1.0));
        assert_eq!(average_precision(&good), Some(1.0));
        let bad = [s(0.1, true), s(0.2, true), s(0.3, false), s(0.9, false)];
        assert_eq!(roc_auc(&bad), Some(0.0));
    }

    #[test]
    fn ties_count_half() {
        let tied = [s(0.5, true), s(0.5, false)];
        assert_eq!(roc_auc(&tied), Some(0.5));
    }

    #[test]
    fn missing_class_gives_none() {
        let only_neg = [s(0.2, false), s(0.7, false)];
        assert_eq!(roc_auc(&only_neg), None);
        assert_eq!(average_precision(&only_neg), None);
        let c = Confusion::at(&only_neg, Probability::new(0.5).unwrap());
        assert_eq!(c.sensitivity(), None);
        assert_eq!(c.specificity(), Some(0.5));
        assert_eq!(c.balanced_accuracy(), None);
    }

    #[test]
    fn always_no_scores_82_percent_and_finds_nothing() {
        // FracAtlas' balance: accuracy flatters a model that never says "fractured".
        let mut v = vec![s(0.0, false); 82];
        v.extend(vec![s(0.0, true); 18]);
        let c = Confusion::at(&v, Probability::new(0.5).unwrap());
        assert_eq!(c.accuracy(), Some(0.82));
        assert_eq!(c.sensitivity(), Some(0.0));
        assert_eq!(c.balanced_accuracy(), Some(0.5));
    }

    #[test]
    fn operating_points() {
        let v = [
            s(0.95, true),
            s(0.9, false),
            s(0.8, true),
            s(0.6, true),
            s(0.4, false),
            s(0.2, true),
            s(0.1, false),
        ];
        let op = threshold_for_sensitivity(&v, 0.75).unwrap();
        assert_eq!(op.threshold.get(), 0.6);
        assert_eq!(op.sensitivity, 0.75);
        let op = threshold_for_specificity(&v, 0.66).unwrap();
        assert_eq!(op.threshold.get(), 0.6);
        assert!((op.specificity - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(op.sensitivity, 0.75);
        let op = threshold_for_specificity(&v, 1.0).unwrap();
        assert_eq!(op.threshold.get(), 0.95);
    }

    #[test]
    fn ece_at_the_samples_own_prevalence_is_the_plain_ece_and_another_reweighs_the_classes() {
        let p = |v| Probability::new(v).unwrap();
        let samples: Vec<Scored> = [
            (0.9, true),
            (0.8, true),
            (0.3, false),
            (0.2, false),
            (0.6, false),
        ]
        .iter()
        .map(|&(v, y)| Scored {
            score: p(v),
            positive: y,
        })
        .collect();
        let plain = expected_calibration_error(&samples, 10).unwrap();
        let same = expected_calibration_error_at(&samples, 10, 0.4).unwrap();
        assert!((plain - same).abs() < 1e-12, "{plain} vs {same}");
        // Fewer fractures: the false alarm at 0.6 weighs more.
        let low = expected_calibration_error_at(&samples, 10, 0.1).unwrap();
        assert!(low > plain, "{low} vs {plain}");
        assert!(expected_calibration_error_at(&samples, 10, 0.0).is_none());
    }

    #[test]
    fn a_bootstrap_interval_holds_the_estimate_and_narrows_with_more_samples() {
        let make = |n: usize| -> Vec<Scored> {
            (0..n)
                .map(|i| Scored {
                    score: Probability::new((i % 10) as f64 / 10.0 + 0.05).unwrap(),
                    positive: i % 10 >= 4 && i % 3 != 0,
                })
                .collect()
        };
        let small = make(60);
        let auc = roc_auc(&small).unwrap();
        let (lo, hi) = bootstrap_interval(&small, roc_auc, 500, 7).unwrap();
        assert!(lo <= auc && auc <= hi && lo < hi, "{lo} {auc} {hi}");
        let (lo2, hi2) = bootstrap_interval(&make(600), roc_auc, 500, 7).unwrap();
        assert!(hi2 - lo2 < hi - lo, "{lo2}..{hi2} against {lo}..{hi}");
        assert_eq!(
            bootstrap_interval(&small, roc_auc, 500, 7),
            Some((lo, hi)),
            "seeded"
        );
        let one_class: Vec<Scored> = small.iter().filter(|s| s.positive).copied().collect();
        assert!(bootstrap_interval(&one_class, roc_auc, 100, 7).is_none());
    }
}
