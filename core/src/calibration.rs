//! Calibration of a classifier's probability: what the model says, mapped to how often it is
//! right at the data's own prevalence. Fitted on the validation split by the trainer, written
//! into the manifest, and applied by the one function [`Calibration::apply`] that the
//! trainer's evaluation and fv-edge both call.
//!
//! A model trained with class-balanced batches or a class-weighted loss sees fractures far
//! more often than FracAtlas' 18 %, and its raw probability overstates them (ECE about 0.10
//! on test for the 224-px model). Platt scaling, a logistic regression on the model's logit,
//! keeps the ranking (ROC-AUC, and which images pass a threshold) and fixes the scale.

use crate::Probability;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a raw probability is calibrated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Calibration {
    /// `p = σ(a · logit(raw) + b)`.
    Platt {
        /// Slope on the raw logit.
        a: f64,
        /// Offset.
        b: f64,
    },
}

/// `ln(p / (1 − p))`, clamped to ±30 so that a saturated softmax stays finite.
pub fn logit(p: Probability) -> f64 {
    let p = p.get().clamp(1e-13, 1.0 - 1e-13);
    (p / (1.0 - p)).ln().clamp(-30.0, 30.0)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Calibration {
    /// The calibrated probability of a raw one.
    pub fn apply(&self, raw: Probability) -> Probability {
        match *self {
            Calibration::Platt { a, b } => Probability::saturating(sigmoid(a * logit(raw) + b)),
        }
    }

    /// Fits Platt scaling to raw probabilities and their labels by Newton's method on the
    /// log loss (with Platt's smoothed targets, so that a separable validation split does not
    /// drive the slope to infinity). `None` without both classes, or when the fitted slope
    /// is not positive.
    pub fn fit_platt(raw: &[Probability], positive: &[bool]) -> Option<Self> {
        let n_pos = positive.iter().filter(|&&y| y).count() as f64;
        let n_neg = positive.len() as f64 - n_pos;
        if n_pos == 0.0 || n_neg == 0.0 {
            return None;
        }
        let (t_pos, t_neg) = ((n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0));
        let z: Vec<f64> = raw.iter().map(|&p| logit(p)).collect();
        let t: Vec<f64> = positive
            .iter()
            .map(|&y| if y { t_pos } else { t_neg })
            .collect();
        let loss = |a: f64, b: f64| -> f64 {
            z.iter()
                .zip(&t)
                .map(|(&zi, &ti)| {
                    // log(1 + e^u) computed without overflow.
                    let u = a * zi + b;
                    let softplus = if u > 0.0 {
                        u + (-u).exp().ln_1p()
                    } else {
                        u.exp().ln_1p()
                    };
                    softplus - ti * u
                })
                .sum()
        };
        let (mut a, mut b) = (1.0f64, 0.0f64);
        let mut current = loss(a, b);
        for _ in 0..100 {
            // Gradient and Hessian of Σ −[t log p + (1 − t) log(1 − p)], p = σ(a z + b).
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (&zi, &ti) in z.iter().zip(&t) {
                let p = sigmoid(a * zi + b);
                let d = p - ti;
                let w = (p * (1.0 - p)).max(1e-12);
                ga += d * zi;
                gb += d;
                haa += w * zi * zi;
                hab += w * zi;
                hbb += w;
            }
            // A touch of ridge keeps the step defined when every logit is equal.
            haa += 1e-9;
            hbb += 1e-9;
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-18 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            // Newton's step, halved until the loss falls (saturated logits make the plain
            // step overshoot).
            let mut step = 1.0;
            let mut moved = false;
            while step > 1e-6 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = loss(na, nb);
                if l <= current {
                    (a, b, current) = (na, nb, l);
                    moved = true;
                    break;
                }
                step /= 2.0;
            }
            if !moved || (step * da).abs() < 1e-10 && (step * db).abs() < 1e-10 {
                break;
            }
        }
        // A slope at or below zero would reverse the model's ranking: such a model is not
        // calibrated, it is broken, and is left as it is.
        (a.is_finite() && b.is_finite() && a > 0.0).then_some(Calibration::Platt { a, b })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: f64) -> Probability {
        Probability::new(v).unwrap()
    }

    #[test]
    fn platt_recovers_a_known_distortion() {
        // True probabilities q; the model reports a sharpened, shifted version of them.
        let mut raw = Vec::new();
        let mut y = Vec::new();
        let mut state = 12345u64;
        for i in 0..4000 {
            let q = 0.02 + 0.96 * (i as f64 / 4000.0);
            let z = (q / (1.0 - q)).ln();
            raw.push(p(sigmoid(2.0 * z + 1.5)));
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            y.push(((state % 10_000) as f64) / 10_000.0 < q);
        }
        let Calibration::Platt { a, b } = Calibration::fit_platt(&raw, &y).unwrap();
        // raw logit = 2 z + 1.5, so z = 0.5 · raw − 0.75.
        assert!((a - 0.5).abs() < 0.06, "a = {a}");
        assert!((b + 0.75).abs() < 0.12, "b = {b}");
        let c = Calibration::Platt { a, b };
        assert!(
            c.apply(p(0.5)).get() < 0.5,
            "an overconfident 0.5 comes down"
        );
    }

    #[test]
    fn keeps_the_order_and_needs_both_classes() {
        let raw = [p(0.1), p(0.4), p(0.7), p(0.9)];
        let c = Calibration::fit_platt(&raw, &[false, true, false, true]).unwrap();
        let out: Vec<f64> = raw.iter().map(|&r| c.apply(r).get()).collect();
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "{out:?}");
        assert!(Calibration::fit_platt(&raw, &[true; 4]).is_none());
        assert!(logit(p(1.0)).is_finite() && logit(p(0.0)).is_finite());
    }
}
