//! Whether an image is within the models' scope (a musculoskeletal radiograph of the kind
//! they learned), decided before any reading is reported.
//!
//! The classifier's graph carries one extra output, the image's distance from its training
//! images: the squared Mahalanobis distance of its pooled embedding under a shrunk covariance,
//! divided by the embedding's width (so that a training image is near 1). `fv-train scope`
//! fits it on training images and chooses the threshold on validation images; the edge reads
//! it through [`Applicability::judge`]. A photograph, a CT slice or a blank frame lands far
//! out, and is `not_applicable` rather than given a fracture probability.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a classifier decides what it may read (its manifest's `applicability`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Applicability {
    /// The graph output holding the distance (its `outputs` entry has the meaning
    /// `scope_distance`).
    pub output: String,
    /// Images whose distance is above this are `not_applicable`.
    pub threshold: f64,
    /// Images more coloured than this ([`crate::imaging::XrayImage::colour`]) are
    /// `not_applicable`: radiographs are grey. Absent: colour is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_colour: Option<f64>,
    /// How the distance is computed, in words.
    pub method: String,
    /// What it was fitted on and what it refused there.
    pub fitted: ScopeFit,
}

/// The images behind an [`Applicability`], and what its threshold refused of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeFit {
    /// Training images whose embeddings gave the mean and covariance.
    pub train_images: usize,
    /// Validation images (each as it is, and under the shifts named below) whose distances
    /// chose the threshold.
    pub valid_images: usize,
    /// The changes a fleet brings (exposure, processing, geometry, resolution) under which the
    /// validation images also counted in the choice, so that another unit's radiographs stay
    /// in scope: those the classifier still reads (its ROC-AUC under the shift at most 0.05
    /// lower); images under a shift it cannot read are better refused.
    pub shifts: Vec<String>,
    /// The quantile of the validation distances (as they are and shifted, together) the
    /// threshold sits at.
    pub quantile: f64,
    /// Share of the validation images, as they are, above the threshold.
    pub valid_refused: f64,
    /// Share of the shifted validation images (all shifts) above the threshold.
    pub valid_shifted_refused: f64,
}

/// What the check said of one image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeReading {
    /// The image's distance from the training images.
    pub distance: f64,
    /// The manifest's threshold.
    pub threshold: f64,
    /// How coloured the image was.
    pub colour: f64,
    /// The manifest's `max_colour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_colour: Option<f64>,
}

impl ScopeReading {
    /// Whether the models may read the image (a distance that is not a number is not).
    pub fn in_scope(&self) -> bool {
        self.distance <= self.threshold && self.max_colour.is_none_or(|m| self.colour <= m)
    }
}

impl Applicability {
    /// Judges one image by the distance its classifier run gave and how coloured its source
    /// was.
    pub fn judge(&self, distance: f32, colour: f32) -> ScopeReading {
        ScopeReading {
            distance: f64::from(distance),
            threshold: self.threshold,
            colour: f64::from(colour),
            max_colour: self.max_colour,
        }
    }

    /// Checks the values against each other and against the manifest's outputs.
    pub(crate) fn validate(&self, outputs: &[crate::manifest::OutputSpec]) -> Result<(), String> {
        if self.max_colour.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            return Err("`applicability.max_colour` is not between 0 and 1".into());
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(format!(
                "`applicability.threshold` is {}, not a positive number",
                self.threshold
            ));
        }
        match outputs.iter().find(|o| o.name == self.output) {
            Some(o) if o.meaning == crate::manifest::OutputMeaning::ScopeDistance => Ok(()),
            Some(o) => Err(format!(
                "`applicability.output` {} is read as {:?}, not scope_distance",
                self.output, o.meaning
            )),
            None => Err(format!(
                "`applicability.output` {} is not among `outputs`",
                self.output
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_distance_above_the_threshold_or_not_a_number_is_out_of_scope() {
        let a = Applicability {
            output: "scope_distance".into(),
            threshold: 2.0,
            max_colour: Some(0.05),
            method: String::new(),
            fitted: ScopeFit {
                train_images: 1,
                valid_images: 1,
                shifts: vec![],
                quantile: 0.99,
                valid_refused: 0.0,
                valid_shifted_refused: 0.0,
            },
        };
        assert!(a.judge(1.0, 0.0).in_scope());
        assert!(a.judge(2.0, 0.04).in_scope());
        assert!(!a.judge(2.01, 0.0).in_scope());
        assert!(!a.judge(f32::NAN, 0.0).in_scope());
        assert!(!a.judge(1.0, 0.2).in_scope());
    }
}
