//! What a unit's day of readings should look like, and whether it does.
//!
//! The classifier's manifest carries its reading's behaviour on the validation split
//! ([`Expected`]): per class, the share reaching `suspicious` and `definite` and the mean
//! probability, and the share its scope check refused. At a deployment prevalence π the
//! expected day is the mixture `π · fractured + (1 − π) · not fractured`; fv-fleet compares each
//! unit's day with it ([`Expected::judge`]), over a range of prevalences (a clinic's case mix
//! is not known exactly), widened by the day's sampling noise and the validation estimates'
//! own. A unit outside the interval is flagged with its figures: a new detector plate, another
//! image processing or a broken calibration shows up as a day no prevalence explains.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How one class of validation images was read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassBehaviour {
    /// Images of the class.
    pub n: usize,
    /// Share at or above `suspicious` (`suspicious` or `fracture`).
    pub positive: f64,
    /// Share at or above `definite`.
    pub fracture: f64,
    /// Mean reported probability.
    pub mean_probability: f64,
    /// Standard deviation of the reported probability.
    pub sd_probability: f64,
}

/// The reading's behaviour on validation (a classifier manifest's `expected`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Which reading: `fusion` (with the manifest's detector) or `classifier`.
    pub reading: String,
    /// Fractured validation images.
    pub fractured: ClassBehaviour,
    /// Validation images without a fracture.
    pub not_fractured: ClassBehaviour,
    /// Share of validation images the scope check refused.
    pub not_applicable: f64,
    /// The deployment prevalences a unit may plausibly see, `[low, high]`.
    pub prevalence: [f64; 2],
}

/// An interval a day's figure is expected in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Interval {
    fn contains(&self, v: f64) -> bool {
        self.low <= v && v <= self.high
    }

    /// From each end of the prevalence range's (value, standard deviation): the lowest value
    /// less [`Z`] deviations to the highest plus, within 0–1.
    fn around(ends: [(f64, f64); 2]) -> Interval {
        Interval {
            low: ends
                .iter()
                .map(|(v, s)| v - Z * s)
                .fold(f64::INFINITY, f64::min)
                .max(0.0),
            high: ends
                .iter()
                .map(|(v, s)| v + Z * s)
                .fold(0.0, f64::max)
                .min(1.0),
        }
    }
}

/// One unit's day, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DayCounts {
    /// Results with a finding (failed inputs are not counted).
    pub read: u64,
    /// `fracture`.
    pub fracture: u64,
    /// `suspicious`.
    pub suspicious: u64,
    /// `not_applicable`.
    pub not_applicable: u64,
    /// Sum of the reported probabilities (of the images given one).
    pub probability_sum: f64,
}

/// One figure of a day against its interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Figure {
    /// The day's value.
    pub value: f64,
    /// Where it is expected.
    pub expected: Interval,
    /// Outside the interval.
    pub outside: bool,
}

/// A day judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DayJudgement {
    /// Images given a probability (read and in scope).
    pub n: u64,
    /// Share `fracture` or `suspicious`, of those.
    pub positive_rate: Figure,
    /// Share `fracture`, of those.
    pub fracture_rate: Figure,
    /// Mean probability, of those.
    pub mean_probability: Figure,
    /// Share `not_applicable`, of all read.
    pub not_applicable_share: Figure,
    /// The figures outside their intervals, by name; empty when the day looks as expected.
    pub flags: Vec<String>,
}

/// The fewest images in a day worth judging: below it one image moves a rate by 10 points.
pub const MIN_IMAGES: u64 = 10;

/// How many standard deviations the interval reaches: with four figures a day, about one
/// false flag per unit every two years.
pub const Z: f64 = 3.5;

impl Expected {
    /// Judges a day; `None` below [`MIN_IMAGES`].
    pub fn judge(&self, day: &DayCounts) -> Option<DayJudgement> {
        let n = day.read.saturating_sub(day.not_applicable);
        if n < MIN_IMAGES {
            return None;
        }
        let nf = n as f64;
        let (pos, neg) = (&self.fractured, &self.not_fractured);
        // A share: the mixture at each end of the prevalence range, each widened by its
        // sampling variance today and the validation estimates' variance.
        let share = |a: f64, b: f64| -> Interval {
            let at = |pi: f64| {
                let r = pi * a + (1.0 - pi) * b;
                let var = r * (1.0 - r) / nf
                    + pi * pi * a * (1.0 - a) / pos.n.max(1) as f64
                    + (1.0 - pi) * (1.0 - pi) * b * (1.0 - b) / neg.n.max(1) as f64;
                (r, var.sqrt())
            };
            Interval::around(self.prevalence.map(at))
        };
        let mean = {
            let at = |pi: f64| {
                let m = pi * pos.mean_probability + (1.0 - pi) * neg.mean_probability;
                let second = pi * (pos.sd_probability.powi(2) + pos.mean_probability.powi(2))
                    + (1.0 - pi) * (neg.sd_probability.powi(2) + neg.mean_probability.powi(2));
                let var = (second - m * m).max(0.0) / nf
                    + pi * pi * pos.sd_probability.powi(2) / pos.n.max(1) as f64
                    + (1.0 - pi).powi(2) * neg.sd_probability.powi(2) / neg.n.max(1) as f64;
                (m, var.sqrt())
            };
            Interval::around(self.prevalence.map(at))
        };
        // Refusals: validation's share, at least 1 %, and only too many is a sign.
        let q = self.not_applicable.max(0.01);
        let all = day.read as f64;
        let not_applicable = Interval {
            low: 0.0,
            high: (q + Z * (q * (1.0 - q) / all).sqrt()).min(1.0),
        };
        let figure = |value: f64, expected: Interval| Figure {
            value,
            expected,
            outside: !expected.contains(value),
        };
        let j = DayJudgement {
            n,
            positive_rate: figure(
                (day.fracture + day.suspicious) as f64 / nf,
                share(pos.positive, neg.positive),
            ),
            fracture_rate: figure(day.fracture as f64 / nf, share(pos.fracture, neg.fracture)),
            mean_probability: figure(day.probability_sum / nf, mean),
            not_applicable_share: figure(day.not_applicable as f64 / all, not_applicable),
            flags: Vec::new(),
        };
        let flags = [
            ("positive_rate", j.positive_rate.outside),
            ("fracture_rate", j.fracture_rate.outside),
            ("mean_probability", j.mean_probability.outside),
            ("not_applicable_share", j.not_applicable_share.outside),
        ]
        .into_iter()
        .filter(|(_, out)| *out)
        .map(|(name, _)| name.to_owned())
        .collect();
        Some(DayJudgement { flags, ..j })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            reading: "fusion".into(),
            fractured: ClassBehaviour {
                n: 82,
                positive: 0.95,
                fracture: 0.66,
                mean_probability: 0.62,
                sd_probability: 0.25,
            },
            not_fractured: ClassBehaviour {
                n: 163,
                positive: 0.44,
                fracture: 0.05,
                mean_probability: 0.17,
                sd_probability: 0.15,
            },
            not_applicable: 0.004,
            prevalence: [0.1, 0.35],
        }
    }

    /// A day of `n` images at prevalence `pi`, read as validation says.
    fn day(n: u64, pi: f64, e: &Expected) -> DayCounts {
        let (p, q) = (&e.fractured, &e.not_fractured);
        let rate = |a: f64, b: f64| ((pi * a + (1.0 - pi) * b) * n as f64).round() as u64;
        let fracture = rate(p.fracture, q.fracture);
        DayCounts {
            read: n,
            fracture,
            suspicious: rate(p.positive, q.positive) - fracture,
            not_applicable: 0,
            probability_sum: (pi * p.mean_probability + (1.0 - pi) * q.mean_probability) * n as f64,
        }
    }

    #[test]
    fn an_ordinary_day_at_any_plausible_prevalence_is_not_flagged() {
        let e = expected();
        for pi in [0.1, 0.18, 0.35] {
            for n in [10, 40, 200] {
                let j = e.judge(&day(n, pi, &e)).unwrap();
                assert!(j.flags.is_empty(), "pi {pi}, n {n}: {j:?}");
            }
        }
        assert_eq!(e.judge(&day(9, 0.18, &e)), None);
    }

    #[test]
    fn a_unit_that_marks_most_images_or_refuses_many_is_flagged() {
        let e = expected();
        // `suspicious` is set for 95 % sensitivity, so about half of an ordinary day reaches
        // it; nine in ten does not happen at any plausible prevalence.
        let mut d = day(60, 0.18, &e);
        d.suspicious = 54 - d.fracture;
        d.probability_sum = 0.6 * 60.0;
        let j = e.judge(&d).unwrap();
        assert!(j.flags.contains(&"positive_rate".to_owned()), "{j:?}");
        assert!(j.flags.contains(&"mean_probability".to_owned()), "{j:?}");
        let mut d = day(60, 0.18, &e);
        d.read += 12;
        d.not_applicable = 12;
        let j = e.judge(&d).unwrap();
        assert_eq!(j.flags, ["not_applicable_share"], "{j:?}");
    }
}
