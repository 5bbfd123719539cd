//! The image-level reading: from the classifier's (and, when installed, the detector's) raw
//! outputs to the one fracture probability and finding a clinician sees. The trainer's
//! evaluation and fv-edge both call [`image_reading`], so the figures in RESULTS.md are
//! those of the function the unit runs.
//!
//! With a detector, the probability is a fusion of the two models: a logistic regression on
//! the classifier's raw logit and the logit of the detector's highest box score, fitted on
//! the validation split and written into the classifier's manifest together with the
//! thresholds chosen for it. The fusion names the detector it was fitted with (by the
//! SHA-256 of its ONNX file): with another detector, or none, the classifier is read alone,
//! with its own calibration and thresholds.

use crate::calibration::{fit_logistic, log_loss, logit, sigmoid};
use crate::manifest::{Manifest, TestMetrics, Thresholds};
use crate::Probability;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label of the fracture class in a classifier's manifest.
pub const FRACTURED: &str = "fractured";
/// The label of the other class in a classifier's manifest.
pub const NOT_FRACTURED: &str = "not_fractured";
/// A classifier's labels, in output order.
pub const CLASSIFIER_LABELS: [&str; 2] = [NOT_FRACTURED, FRACTURED];
/// The one label of a fracture detector's boxes.
pub const FRACTURE_BOX: &str = "fracture";

/// Outputs that do not fit the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ReadoutError {
    /// The classifier returned a different number of values than it has labels.
    #[error("model {model}: the classifier returned {got} values for {labels} labels; the ONNX file and its manifest do not belong together (re-export both)")]
    ClassifierShape {
        /// The model's name, from its manifest.
        model: String,
        /// Values returned.
        got: usize,
        /// Labels in the manifest.
        labels: usize,
    },
    /// The classifier was read on other views than its manifest asks for.
    #[error("model {model}: its manifest asks for {expected} view(s) of the image (test_time_hflip), and the reading had another number")]
    Views {
        /// The model's name, from its manifest.
        model: String,
        /// 2 with `test_time_hflip`, else 1.
        expected: usize,
    },
    /// The detector's output is not `(4 + classes) × anchors`.
    #[error("model {model}: {source}")]
    DetectorShape {
        /// The model's name, from its manifest.
        model: String,
        /// The shape problem.
        source: crate::detection::YoloShapeError,
    },
}

/// The fracture class's raw (uncalibrated) probability from a classifier's first output,
/// read as its manifest says (`probabilities`, or `logits` through a softmax).
pub fn classifier_raw(manifest: &Manifest, out: &[f32]) -> Result<Probability, ReadoutError> {
    if out.len() != manifest.labels.len() {
        return Err(ReadoutError::ClassifierShape {
            model: manifest.name.clone(),
            got: out.len(),
            labels: manifest.labels.len(),
        });
    }
    let k = manifest
        .labels
        .iter()
        .position(|l| l == FRACTURED)
        .unwrap_or(manifest.labels.len().saturating_sub(1));
    let p = match manifest.outputs.first().map(|o| o.meaning) {
        Some(crate::manifest::OutputMeaning::Logits) => {
            let max = out.iter().copied().fold(f32::MIN, f32::max);
            let sum: f32 = out.iter().map(|v| (v - max).exp()).sum();
            (out[k] - max).exp() / sum
        }
        _ => out[k],
    };
    Ok(Probability::saturating(p as f64))
}

/// The highest class score over every anchor of a YOLOv8 output `[1, 4 + classes, anchors]`:
/// the detector's image-level score. Suppression never removes the top box, so this is the
/// score of the first box the edge reports, before any floor.
pub fn detector_top_score(manifest: &Manifest, out: &[f32]) -> Result<Probability, ReadoutError> {
    let classes = manifest.labels.len().max(1);
    let anchors = out.len() / (4 + classes);
    if out.len() != (4 + classes) * anchors || anchors == 0 {
        return Err(ReadoutError::DetectorShape {
            model: manifest.name.clone(),
            source: crate::detection::YoloShapeError {
                len: out.len(),
                classes,
                anchors,
            },
        });
    }
    let top = out[4 * anchors..].iter().copied().fold(0.0f32, f32::max);
    Ok(Probability::saturating(top as f64))
}

/// `p = σ(classifier_weight · logit(classifier raw) + detector_weight · logit(detector top
/// score) + bias)`, fitted on validation, with the thresholds chosen on the fused
/// probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fusion {
    /// SHA-256 of the detector's ONNX file the fusion was fitted with.
    pub detector_sha256: String,
    /// The detector's model name (for people; the hash decides).
    pub detector: String,
    /// Weight on the classifier's raw logit.
    pub classifier_weight: f64,
    /// Weight on the logit of the detector's top box score.
    pub detector_weight: f64,
    /// Offset.
    pub bias: f64,
    /// Operating thresholds on the fused probability, chosen on validation.
    pub thresholds: Thresholds,
    /// Test metrics of the fused probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<TestMetrics>,
}

impl Fusion {
    /// The fused probability.
    pub fn probability(
        &self,
        classifier_raw: Probability,
        detector_top: Probability,
    ) -> Probability {
        Probability::saturating(sigmoid(
            self.classifier_weight * logit(classifier_raw)
                + self.detector_weight * logit(detector_top)
                + self.bias,
        ))
    }

    /// The weights `[classifier, detector, bias]` fitted to validation readings. `None`
    /// without both classes or when the fit fails.
    pub fn fit(
        classifier_raw: &[Probability],
        detector_top: &[Probability],
        positive: &[bool],
    ) -> Option<[f64; 3]> {
        let x = features(classifier_raw, detector_top);
        let w = fit_logistic(&x, positive)?;
        Some([w[0], w[1], w[2]])
    }

    /// `folds`-fold cross-validated mean log loss on the given readings, of the fusion (two
    /// features) and of the classifier alone (Platt: one feature): how the choice between
    /// them is made on validation without scoring a fit on the images it was fitted to.
    /// Fold `i` holds the readings whose index is `i` modulo `folds`. `None` when a fold's
    /// training part lacks a class.
    pub fn cross_validated_log_loss(
        classifier_raw: &[Probability],
        detector_top: &[Probability],
        positive: &[bool],
        folds: usize,
    ) -> Option<(f64, f64)> {
        let x2 = features(classifier_raw, detector_top);
        let x1: Vec<Vec<f64>> = x2.iter().map(|r| vec![r[0]]).collect();
        let y: Vec<f64> = positive.iter().map(|&p| f64::from(u8::from(p))).collect();
        let folds = folds.max(2);
        let mut totals = (0.0, 0.0);
        for f in 0..folds {
            let held = |i: usize| i % folds == f;
            let pick = |x: &[Vec<f64>], keep_held: bool| -> (Vec<Vec<f64>>, Vec<bool>, Vec<f64>) {
                let idx: Vec<usize> = (0..x.len()).filter(|&i| held(i) == keep_held).collect();
                (
                    idx.iter().map(|&i| x[i].clone()).collect(),
                    idx.iter().map(|&i| positive[i]).collect(),
                    idx.iter().map(|&i| y[i]).collect(),
                )
            };
            for (x, total) in [(&x2, &mut totals.0), (&x1, &mut totals.1)] {
                let (train_x, train_y, _) = pick(x, false);
                let (test_x, _, test_t) = pick(x, true);
                let w = fit_logistic(&train_x, &train_y)?;
                *total += log_loss(&w, &test_x, &test_t) * test_x.len() as f64;
            }
        }
        let n = positive.len().max(1) as f64;
        Some((totals.0 / n, totals.1 / n))
    }
}

fn features(classifier_raw: &[Probability], detector_top: &[Probability]) -> Vec<Vec<f64>> {
    classifier_raw
        .iter()
        .zip(detector_top)
        .map(|(&c, &d)| vec![logit(c), logit(d)])
        .collect()
}

/// What the image-level reading was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadingSource {
    /// The classifier alone (calibrated as its manifest says).
    Classifier,
    /// The fusion of the classifier and the detector in the classifier's manifest.
    Fusion,
}

/// The image-level reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageReading {
    /// The calibrated fracture probability.
    pub probability: Probability,
    /// The operating thresholds that apply to it.
    pub thresholds: Thresholds,
    /// How it was computed.
    pub source: ReadingSource,
}

/// Whether the classifier's fusion applies with `detector` installed: it must be the very
/// detector (same ONNX SHA-256) the fusion was fitted with.
pub fn fusion_with<'a>(
    classifier: &'a Manifest,
    detector: Option<&Manifest>,
) -> Option<&'a Fusion> {
    let fusion = classifier.fusion.as_ref()?;
    (detector?.onnx_sha256 == fusion.detector_sha256).then_some(fusion)
}

/// The classifier's first output on each view its manifest asks for: the image, and its
/// mirror when `test_time_hflip` is set ([`crate::preprocess::InputTensor::mirrored`]).
#[derive(Clone, Copy, Debug)]
pub struct ClassifierViews<'a> {
    /// On the image.
    pub image: &'a [f32],
    /// On the image mirrored left to right.
    pub mirrored: Option<&'a [f32]>,
}

impl<'a> ClassifierViews<'a> {
    /// The image alone.
    pub fn single(image: &'a [f32]) -> Self {
        ClassifierViews {
            image,
            mirrored: None,
        }
    }

    /// The fracture class's raw probability as the manifest defines it: on the image, or the
    /// mean over the image and its mirror. A missing or unexpected mirror is an error, so a
    /// caller cannot silently read a model on another scale than it was calibrated on.
    pub fn raw(&self, manifest: &Manifest) -> Result<Probability, ReadoutError> {
        let image = classifier_raw(manifest, self.image)?;
        match (manifest.test_time_hflip, self.mirrored) {
            (false, None) => Ok(image),
            (true, Some(m)) => Ok(mean_of_views(image, classifier_raw(manifest, m)?)),
            (expected, _) => Err(ReadoutError::Views {
                model: manifest.name.clone(),
                expected: if expected { 2 } else { 1 },
            }),
        }
    }
}

/// The test-time-flip reading of a classifier: the mean of its raw probabilities on the
/// image and on its mirror (what `fv-train fuse` compares and fv-edge computes).
pub fn mean_of_views(image: Probability, mirrored: Probability) -> Probability {
    Probability::saturating((image.get() + mirrored.get()) / 2.0)
}

/// The one function from model outputs to the image's reading. `detector` is the detector's
/// manifest and first output when it ran on this image.
pub fn image_reading(
    classifier: &Manifest,
    views: ClassifierViews<'_>,
    detector: Option<(&Manifest, &[f32])>,
) -> Result<ImageReading, ReadoutError> {
    let raw = views.raw(classifier)?;
    let fusion =
        detector.and_then(|(dm, out)| fusion_with(classifier, Some(dm)).map(|f| (f, dm, out)));
    let fitted = match fusion {
        Some((f, dm, out)) => ImageReading {
            probability: f.probability(raw, detector_top_score(dm, out)?),
            thresholds: f.thresholds,
            source: ReadingSource::Fusion,
        },
        None => ImageReading {
            // The manifest's thresholds are on the calibrated scale when it has a calibration.
            probability: classifier
                .probability_calibration
                .map_or(raw, |c| c.apply(raw)),
            thresholds: classifier.thresholds,
            source: ReadingSource::Classifier,
        },
    };
    // The probability at the stream's prevalence, the thresholds moved with it: the same
    // images reach each finding.
    let at = classifier.prevalence;
    Ok(ImageReading {
        probability: at.map_or(fitted.probability, |p| p.apply(fitted.probability)),
        thresholds: fitted.thresholds.at(at),
        source: fitted.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: f64) -> Probability {
        Probability::new(v).unwrap()
    }

    /// Two noisy views of one latent: together they rank better than either alone, and the
    /// fit gives both a positive weight.
    fn two_views(n: usize) -> (Vec<Probability>, Vec<Probability>, Vec<bool>) {
        let mut state = 99u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1_000_000) as f64 / 1_000_000.0
        };
        let (mut c, mut d, mut y) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let pos = next() < 0.2;
            let z = if pos { 1.5 } else { -1.5 };
            c.push(p(sigmoid(z + 2.0 * (next() - 0.5) * 3.0)));
            d.push(p(sigmoid(0.5 * z - 2.0 + 2.0 * (next() - 0.5) * 3.0)));
            y.push(pos);
        }
        (c, d, y)
    }

    #[test]
    fn fusion_weighs_both_models_and_cross_validation_prefers_it() {
        let (c, d, y) = two_views(3000);
        let [wc, wd, _] = Fusion::fit(&c, &d, &y).unwrap();
        assert!(wc > 0.0 && wd > 0.0, "{wc} {wd}");
        let (fused, alone) = Fusion::cross_validated_log_loss(&c, &d, &y, 5).unwrap();
        assert!(fused < alone, "fused {fused} alone {alone}");
        // A detector that is pure noise does not help out of fold.
        let noise: Vec<Probability> = (0..c.len())
            .map(|i| p(((i * 7919) % 997) as f64 / 997.0 * 0.98 + 0.01))
            .collect();
        let (fused, alone) = Fusion::cross_validated_log_loss(&c, &noise, &y, 5).unwrap();
        assert!(fused > alone - 1e-3, "fused {fused} alone {alone}");
    }

    #[test]
    fn the_top_score_is_the_largest_class_score() {
        let m: Manifest =
            serde_json::from_str(include_str!("../../models/yolov8-effl0-fracatlas.json")).unwrap();
        // Three anchors, one class: rows cx, cy, w, h, score.
        let out = [
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.7, 0.3,
        ];
        assert_eq!(detector_top_score(&m, &out).unwrap(), p(0.7f32 as f64));
        assert!(detector_top_score(&m, &out[..14]).is_err());
    }
}
