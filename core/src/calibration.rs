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

/// FracAtlas' share of fractured images (717 of 4083): the default deployment prevalence,
/// nearer a clinic's stream than validation's 33 %.
pub const FRACATLAS_PREVALENCE: f64 = 717.0 / 4083.0;

/// A change of prior: a probability calibrated on data with `fitted` fractures, read on a
/// stream with `deployment` of them. Bayes' rule moves the log-odds by
/// `logit(deployment) − logit(fitted)` and leaves the likelihood ratio, so the ranking and
/// the sensitivity and specificity at each threshold stay as they were when the thresholds
/// move the same way ([`Prevalence::threshold`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prevalence {
    /// The share of fractured images the calibration, fusion and thresholds were fitted on
    /// (validation's).
    pub fitted: f64,
    /// The share the reported probability is corrected to.
    pub deployment: f64,
}

/// A prevalence that is not a share strictly between 0 and 1.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("a prevalence of {0} is not a share strictly between 0 and 1 (FracAtlas: 0.176)")]
pub struct PrevalenceError(pub f64);

impl Prevalence {
    /// Checks both shares.
    pub fn new(fitted: f64, deployment: f64) -> Result<Self, PrevalenceError> {
        for v in [fitted, deployment] {
            if !(v > 0.0 && v < 1.0) {
                return Err(PrevalenceError(v));
            }
        }
        Ok(Prevalence { fitted, deployment })
    }

    fn shift(&self) -> f64 {
        let l = |v: f64| (v / (1.0 - v)).ln();
        l(self.deployment.clamp(1e-6, 1.0 - 1e-6)) - l(self.fitted.clamp(1e-6, 1.0 - 1e-6))
    }

    /// `p` (at `fitted`) at `deployment`.
    pub fn apply(&self, p: Probability) -> Probability {
        Probability::saturating(sigmoid(logit(p) + self.shift()))
    }

    /// A threshold on the fitted scale moved to the deployment scale: an image passes it
    /// after the correction exactly when it passed before.
    pub fn threshold(&self, t: Probability) -> Probability {
        self.apply(t)
    }
}

/// `ln(p / (1 − p))`, clamped to ±30 so that a saturated softmax stays finite.
pub fn logit(p: Probability) -> f64 {
    let p = p.get().clamp(1e-13, 1.0 - 1e-13);
    (p / (1.0 - p)).ln().clamp(-30.0, 30.0)
}

impl Calibration {
    /// The calibrated probability of a raw one.
    pub fn apply(&self, raw: Probability) -> Probability {
        match *self {
            Calibration::Platt { a, b } => Probability::saturating(sigmoid(a * logit(raw) + b)),
        }
    }

    /// Fits Platt scaling to raw probabilities and their labels (a logistic regression on
    /// the raw logit, [`fit_logistic`]). `None` without both classes, or when the fitted
    /// slope is not positive.
    pub fn fit_platt(raw: &[Probability], positive: &[bool]) -> Option<Self> {
        let x: Vec<Vec<f64>> = raw.iter().map(|&p| vec![logit(p)]).collect();
        let w = fit_logistic(&x, positive)?;
        let (a, b) = (w[0], w[1]);
        // A slope at or below zero would reverse the model's ranking: such a model is not
        // calibrated, it is broken, and is left as it is.
        (a > 0.0).then_some(Calibration::Platt { a, b })
    }
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Mean log loss of `p = σ(w · x + bias)` against 0/1 `targets` (`w` holds the weights then
/// the bias, as [`fit_logistic`] returns them).
pub fn log_loss(w: &[f64], x: &[Vec<f64>], targets: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    x.iter()
        .zip(targets)
        .map(|(xi, &ti)| {
            let u = linear(w, xi);
            // log(1 + e^u) without overflow.
            let softplus = if u > 0.0 {
                u + (-u).exp().ln_1p()
            } else {
                u.exp().ln_1p()
            };
            softplus - ti * u
        })
        .sum::<f64>()
        / n
}

fn linear(w: &[f64], x: &[f64]) -> f64 {
    x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[x.len()]
}

/// Logistic regression of `positive` on the features `x` (each row the same length `k`), by
/// Newton's method with a halving line search on the log loss, with Platt's smoothed targets
/// so that a separable validation split does not drive the weights to infinity. Returns `k`
/// weights then the bias; `None` without both classes, with ragged rows, or when the fit
/// does not converge to finite values.
pub fn fit_logistic(x: &[Vec<f64>], positive: &[bool]) -> Option<Vec<f64>> {
    let k = x.first()?.len();
    if x.len() != positive.len() || x.iter().any(|r| r.len() != k) {
        return None;
    }
    let n_pos = positive.iter().filter(|&&y| y).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let (t_pos, t_neg) = ((n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0));
    let t: Vec<f64> = positive
        .iter()
        .map(|&y| if y { t_pos } else { t_neg })
        .collect();
    // Start from slope 1 on the first feature (for Platt: the identity map).
    let mut w = vec![0.0; k + 1];
    w[0] = 1.0;
    let mut current = log_loss(&w, x, &t);
    for _ in 0..100 {
        // Gradient and Hessian of the mean log loss, in the augmented features (x, 1).
        let m = k + 1;
        let mut g = vec![0.0; m];
        let mut h = vec![vec![0.0; m]; m];
        for (xi, &ti) in x.iter().zip(&t) {
            let p = sigmoid(linear(&w, xi));
            let d = p - ti;
            let s = (p * (1.0 - p)).max(1e-12);
            let feat = |j: usize| if j < k { xi[j] } else { 1.0 };
            for (a, (ga, row)) in g.iter_mut().zip(h.iter_mut()).enumerate() {
                *ga += d * feat(a);
                for (b, hab) in row.iter_mut().enumerate() {
                    *hab += s * feat(a) * feat(b);
                }
            }
        }
        // A touch of ridge keeps the step defined when a feature is constant.
        for (a, row) in h.iter_mut().enumerate() {
            row[a] += 1e-9;
        }
        let Some(step_dir) = solve(h, g) else { break };
        // Newton's step, halved until the loss falls (saturated logits make the plain step
        // overshoot).
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-6 {
            let trial: Vec<f64> = w
                .iter()
                .zip(&step_dir)
                .map(|(wi, di)| wi - step * di)
                .collect();
            let l = log_loss(&trial, x, &t);
            if l <= current {
                w = trial;
                current = l;
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved || step_dir.iter().all(|d| (step * d).abs() < 1e-10) {
            break;
        }
    }
    w.iter().all(|v| v.is_finite()).then_some(w)
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting (tiny systems only).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-18 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (k, r) in lower.iter_mut().enumerate() {
            let f = r[col] / pivot_row[col];
            for (x, p) in r[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + k] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
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

    #[test]
    fn a_prior_shift_moves_probability_and_thresholds_together() {
        let p = |v| Probability::new(v).unwrap();
        let at = Prevalence::new(82.0 / 245.0, super::FRACATLAS_PREVALENCE).unwrap();
        // Fewer fractures in the stream: every probability comes down.
        assert!(at.apply(p(0.5)).get() < 0.5);
        // Odds scale by (0.176/0.824)/(0.335/0.665): 0.5 → about 0.298.
        assert!(
            (at.apply(p(0.5)).get() - 0.2977).abs() < 1e-3,
            "{:?}",
            at.apply(p(0.5))
        );
        // The same images pass a moved threshold as passed the old one.
        for (v, t) in [(0.59, 0.594), (0.60, 0.594), (0.10, 0.107), (0.11, 0.107)] {
            assert_eq!(
                at.apply(p(v)) >= at.threshold(p(t)),
                p(v) >= p(t),
                "{v} against {t}"
            );
        }
        // At its own prevalence nothing moves.
        let same = Prevalence::new(0.3, 0.3).unwrap();
        assert!((same.apply(p(0.42)).get() - 0.42).abs() < 1e-12);
        assert_eq!(Prevalence::new(0.3, 1.0), Err(PrevalenceError(1.0)));
    }
}
