//! One image in, one reading out: preprocess as each manifest says, run the classifier, run
//! the detector when the policy (or a fusion) asks for it, and read the outputs through
//! fv-core. fv-edge serves every image through [`Models::read`].

use crate::models::Models;
use fv_core::detection::{decode_yolov8, nms, NmsSettings};
use fv_core::imaging::XrayImage;
use fv_core::preprocess::preprocess;
use fv_core::reading::{fusion_with, image_reading, ClassifierViews};
use fv_core::result::{Finding, Level, Localization, ResultBox, Timing};
use fv_core::scope::ScopeReading;
use fv_core::Probability;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// When the detector runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DetectPolicy {
    /// On every image.
    Always,
    /// Only when the fracture probability is at or above the classifier's `suspicious`; on
    /// every image when the classifier is fused with the installed detector (the fused
    /// reading needs its score).
    #[default]
    Suspicious,
    /// Never.
    Never,
}

/// How to read an image.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// When to detect.
    pub detect: DetectPolicy,
    /// The smallest box score reported, exactly (boxes below the detector's `suspicious` are
    /// then `candidate`s); `None`: the detector's `suspicious`, at least
    /// [`DEFAULT_MIN_SCORE`].
    pub min_score: Option<f32>,
}

/// The box floor when none is asked for, under the detector's own `suspicious`.
pub const DEFAULT_MIN_SCORE: f32 = 0.25;

/// The lowest score a region may have to be shown as the place to look when a positive
/// image has no box: below it the detector saw nothing there at all.
pub const CANDIDATE_FLOOR: f32 = 0.01;

/// What the models say of one image.
#[derive(Clone, Debug)]
pub struct ImageReading {
    /// The image's fracture probability (fused with the detector's when the manifest says
    /// so); `None` when the image is outside the models' scope.
    pub probability: Option<Probability>,
    /// That probability at the manifest's `suspicious` and `definite`, or `not_applicable`.
    pub finding: Finding,
    /// The classifier's scope check, when its manifest has one.
    pub scope: Option<ScopeReading>,
    /// Boxes in the original image's pixels, when the detector ran.
    pub boxes: Vec<ResultBox>,
    /// Where to look, for a positive finding.
    pub localization: Option<Localization>,
    /// Milliseconds spent in preprocessing, the classifier and the detector (`decode` and
    /// `total` are the caller's).
    pub timing: Timing,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Models {
    fn all_read_8_bits(&self) -> bool {
        let eight = |m: &fv_core::manifest::Manifest| m.input.intensity_bits == 8;
        eight(&self.classifier.manifest)
            && self.detector.as_ref().is_none_or(|d| eight(&d.manifest))
    }

    /// Reads `image` with the classifier and, as `o.detect` says, the detector.
    pub fn read(&mut self, image: &XrayImage, o: &ReadOptions) -> anyhow::Result<ImageReading> {
        let mut timing = Timing::default();
        let t = Instant::now();
        // Narrowed once here when every model reads 8 bits, not once in each model's
        // preprocessing.
        let narrowed;
        let image = match image.container_bits() > 8 && self.all_read_8_bits() {
            true => {
                narrowed = image.narrowed();
                &narrowed
            }
            false => image,
        };
        let c = &mut self.classifier;
        let pre = preprocess(image, &c.manifest.input);
        timing.preprocess = ms(t);
        let t = Instant::now();
        let first = |out: Vec<Vec<f32>>| out.into_iter().next().unwrap_or_default();
        let outputs = c.engine.run(&pre.tensor)?;
        let scope = match &c.manifest.applicability {
            Some(a) => {
                // Graph outputs come in the manifest's order.
                let at = c.manifest.outputs.iter().position(|o| o.name == a.output);
                let value = at.and_then(|i| outputs.get(i)).and_then(|v| v.first());
                let Some(&distance) = value else {
                    anyhow::bail!(
                        "{}: the graph has no output {} for the scope check its manifest \
                         names; re-run `fv-train scope` on it",
                        c.manifest.name,
                        a.output
                    );
                };
                Some(a.judge(distance, image.colour()))
            }
            None => None,
        };
        if let Some(s) = scope.filter(|s| !s.in_scope()) {
            timing.classify = ms(t);
            return Ok(ImageReading {
                probability: None,
                finding: Finding::NotApplicable,
                scope: Some(s),
                boxes: Vec::new(),
                localization: None,
                timing,
            });
        }
        let cls_out = first(outputs);
        // The mirror too when the manifest's calibration was fitted to the mean of both.
        let mirrored = match c.manifest.test_time_hflip {
            true => Some(first(c.engine.run(&pre.tensor.mirrored())?)),
            false => None,
        };
        timing.classify = ms(t);
        let views = ClassifierViews {
            image: &cls_out,
            mirrored: mirrored.as_deref(),
        };
        let c = &self.classifier;
        // A fused reading needs the detector's score on every image.
        let fused = fusion_with(&c.manifest, self.detector.as_ref().map(|d| &d.manifest)).is_some();
        let alone = image_reading(&c.manifest, views, None)?;
        // `never` is the operator's word (the detector costs time): the classifier is then
        // read alone, fused or not.
        let run_detector = match o.detect {
            DetectPolicy::Always => true,
            DetectPolicy::Suspicious => fused || alone.probability >= alone.thresholds.suspicious,
            DetectPolicy::Never => false,
        };
        let mut boxes = Vec::new();
        let mut candidate = None;
        let mut det_out = None;
        if let (true, Some(d)) = (run_detector, self.detector.as_mut()) {
            let t = Instant::now();
            let pre = preprocess(image, &d.manifest.input);
            let out = d.engine.run(&pre.tensor)?;
            let raw = out.into_iter().next().unwrap_or_default();
            let classes = d.manifest.labels.len().max(1);
            let anchors = raw.len() / (4 + classes);
            let dt = d.manifest.thresholds;
            let floor = o
                .min_score
                .unwrap_or((dt.suspicious.get() as f32).max(DEFAULT_MIN_SCORE));
            // Decoded down to the candidate floor once: the reported boxes are those at the
            // floor, the best of the rest is the candidate a positive image may need.
            let dets = decode_yolov8(&raw, classes, anchors, floor.min(CANDIDATE_FLOOR))?;
            let best = dets
                .iter()
                .max_by(|a, b| a.score.get().total_cmp(&b.score.get()))
                .cloned();
            let dets: Vec<_> = dets
                .into_iter()
                .filter(|k| k.score.get() >= f64::from(floor))
                .collect();
            // The suppression the trainer evaluated with, from the manifest.
            let settings = d.manifest.nms.unwrap_or(NmsSettings::EDGE);
            let to_box = |k: &fv_core::Detection| {
                let b = pre.geometry.to_original(&k.bbox);
                ResultBox {
                    x1: b.x1,
                    y1: b.y1,
                    x2: b.x2,
                    y2: b.y2,
                    score: k.score,
                    level: if k.score >= dt.definite {
                        Level::Definite
                    } else if k.score >= dt.suspicious {
                        Level::Suspicious
                    } else {
                        Level::Candidate
                    },
                }
            };
            boxes = nms(dets, &settings.with_floor(floor))
                .iter()
                .map(to_box)
                .collect();
            candidate = best.map(|k| to_box(&k));
            timing.detect = Some(ms(t));
            det_out = Some(raw);
        }
        let reading = match (&det_out, &self.detector) {
            (Some(raw), Some(d)) => {
                image_reading(&self.classifier.manifest, views, Some((&d.manifest, raw)))?
            }
            _ => alone,
        };
        let finding = Finding::at(
            reading.probability,
            reading.thresholds.suspicious,
            reading.thresholds.definite,
        );
        let localization = match finding {
            Finding::NoFracture | Finding::NotApplicable => None,
            _ if det_out.is_none() => Some(Localization::NotRun),
            _ if boxes.iter().any(|b| b.level != Level::Candidate) => Some(Localization::Boxes),
            _ => match candidate {
                Some(c) => {
                    // The one best region, if it is not already among the boxes shown.
                    if boxes.is_empty() {
                        boxes.push(c);
                    }
                    Some(Localization::Candidate)
                }
                None => Some(Localization::NotFound),
            },
        };
        Ok(ImageReading {
            probability: Some(reading.probability),
            finding,
            scope,
            boxes,
            localization,
            timing,
        })
    }
}

#[cfg(test)]
mod tests {
    use fv_core::reading::{image_reading, ClassifierViews};
    use fv_core::Probability;

    /// A committed manifest, read on the image alone (the tests below give one view) at
    /// the prevalence it was fitted at (the correction has its own test).
    fn manifest(name: &str) -> fv_core::manifest::Manifest {
        let path = format!("{}/../models/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let mut m = fv_core::manifest::Manifest::from_path(std::path::Path::new(&path)).unwrap();
        m.test_time_hflip = false;
        m.prevalence = None;
        m
    }

    #[test]
    fn the_classifier_probability_is_calibrated_as_its_manifest_says() {
        let mut m = manifest("efficientnet-lite0-fracatlas");
        // The committed classifier outputs probabilities: 0.75 for a fracture here.
        let out = [0.25f32, 0.75];
        m.probability_calibration = None;
        let raw = image_reading(&m, ClassifierViews::single(&out), None)
            .unwrap()
            .probability
            .get();
        let c = fv_core::calibration::Calibration::Platt { a: 0.5, b: -1.0 };
        m.probability_calibration = Some(c);
        let calibrated = image_reading(&m, ClassifierViews::single(&out), None)
            .unwrap()
            .probability;
        assert!((raw - 0.75).abs() < 1e-6);
        assert_eq!(calibrated, c.apply(Probability::saturating(raw)));
        assert!(calibrated.get() < raw);
    }

    #[test]
    fn at_another_prevalence_the_probability_moves_and_every_finding_stays() {
        use fv_core::calibration::Prevalence;
        use fv_core::result::Finding;
        let m = manifest("efficientnet-lite0-fracatlas");
        let read = |m: &fv_core::manifest::Manifest, p: f32| {
            let r = image_reading(m, ClassifierViews::single(&[1.0 - p, p]), None).unwrap();
            let t = r.thresholds;
            (
                r.probability,
                Finding::at(r.probability, t.suspicious, t.definite),
            )
        };
        let at = Prevalence::new(0.335, 0.176).unwrap();
        let mut shifted = m.clone();
        shifted.prevalence = Some(at);
        for raw in [0.02f32, 0.2, 0.4, 0.55, 0.7, 0.9, 0.99] {
            let (p0, f0) = read(&m, raw);
            let (p1, f1) = read(&shifted, raw);
            assert_eq!(p1, at.apply(p0), "{raw}");
            assert!(p1 < p0, "fewer fractures in the stream: {raw}");
            assert_eq!(f1, f0, "{raw}: the same finding at the moved thresholds");
        }
    }

    #[test]
    fn the_fusion_applies_only_with_its_own_detector() {
        let mut m = manifest("efficientnet-lite0-fracatlas");
        let mut d = manifest("yolov8-effl0-fracatlas");
        let fusion = fv_core::reading::Fusion {
            detector_sha256: d.onnx_sha256.clone(),
            detector: d.name.clone(),
            classifier_weight: 1.0,
            detector_weight: 1.0,
            bias: 0.0,
            thresholds: fv_core::manifest::Thresholds {
                suspicious: Probability::new(0.1).unwrap(),
                definite: Probability::new(0.9).unwrap(),
            },
            metrics: None,
        };
        m.fusion = Some(fusion.clone());
        let cls = [0.5f32, 0.5];
        // One anchor, one class: the top score is 0.9, so the fused logit is logit(0.9).
        let det = [0.0f32, 0.0, 1.0, 1.0, 0.9];
        let r = image_reading(&m, ClassifierViews::single(&cls), Some((&d, &det))).unwrap();
        assert_eq!(r.source, fv_core::reading::ReadingSource::Fusion);
        assert!(
            (r.probability.get() - 0.9).abs() < 1e-6,
            "{}",
            r.probability
        );
        assert_eq!(r.thresholds, fusion.thresholds);
        // Another detector: the classifier alone, on its own thresholds.
        d.onnx_sha256 = "0".repeat(64);
        let r = image_reading(&m, ClassifierViews::single(&cls), Some((&d, &det))).unwrap();
        assert_eq!(r.source, fv_core::reading::ReadingSource::Classifier);
        assert_eq!(r.thresholds, m.thresholds);
    }

    #[test]
    fn test_time_flips_average_both_views_and_are_required_when_the_manifest_asks() {
        let mut m = manifest("efficientnet-lite0-fracatlas");
        m.probability_calibration = None;
        m.test_time_hflip = true;
        let (image, mirror) = ([0.4f32, 0.6], [0.2f32, 0.8]);
        let both = ClassifierViews {
            image: &image,
            mirrored: Some(&mirror),
        };
        let p = image_reading(&m, both, None).unwrap().probability.get();
        assert!((p - 0.7).abs() < 1e-6, "{p}");
        // One view where the manifest asks for two, or two where it asks for one: refused.
        let e = image_reading(&m, ClassifierViews::single(&image), None).unwrap_err();
        assert!(e.to_string().contains("test_time_hflip"), "{e}");
        m.test_time_hflip = false;
        assert!(image_reading(&m, both, None).is_err());
    }
}
