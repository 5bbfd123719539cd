//! Postprocessing for detectors: decoding YOLOv8's raw output and non-maximum suppression.

use crate::{BoxXyxy, Detection, Probability};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a detector's boxes are suppressed, as its manifest says: the trainer evaluates, and
/// chooses the box thresholds, under exactly the suppression the edge then applies (before
/// this, the trainer used IoU 0.7 and 300 boxes per class, the edge 0.45 and 100 across
/// classes, so thresholds chosen on validation were applied to other boxes).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NmsSettings {
    /// A box overlapping a kept, higher-scoring one by more than this is suppressed.
    pub iou_threshold: f32,
    /// At most this many boxes per image.
    pub max_detections: usize,
    /// Suppress across classes, not only within one.
    pub class_agnostic: bool,
}

impl NmsSettings {
    /// IoU 0.45, 100 boxes, across classes: what fv-edge applied before manifests carried
    /// the settings (so still what a manifest without them means), and what the trainer
    /// evaluates and exports with.
    pub const EDGE: NmsSettings = NmsSettings {
        iou_threshold: 0.45,
        max_detections: 100,
        class_agnostic: true,
    };

    /// The options for one use: these settings and a score floor.
    pub fn with_floor(self, score_threshold: f32) -> NmsOptions {
        NmsOptions {
            score_threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
            class_agnostic: self.class_agnostic,
        }
    }
}

/// Settings for turning raw detector output into detections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NmsOptions {
    /// Detections scoring below this are dropped before suppression.
    pub score_threshold: f32,
    /// A box overlapping a kept, higher-scoring box of the same class by more than this is
    /// suppressed.
    pub iou_threshold: f32,
    /// At most this many detections are kept per image.
    pub max_detections: usize,
    /// Suppress across classes, not only within one.
    pub class_agnostic: bool,
}

impl Default for NmsOptions {
    /// Ultralytics' validation defaults: conf 0.001, IoU 0.7, 300 detections.
    fn default() -> Self {
        NmsOptions {
            score_threshold: 0.001,
            iou_threshold: 0.7,
            max_detections: 300,
            class_agnostic: false,
        }
    }
}

/// Greedy non-maximum suppression: keeps the highest-scoring box, drops boxes overlapping it
/// by more than the IoU threshold, and repeats. Returns detections sorted by score,
/// highest first. Equal scores keep their input order, so results are reproducible.
pub fn nms(mut detections: Vec<Detection>, options: &NmsOptions) -> Vec<Detection> {
    detections.retain(|d| d.score.get() >= options.score_threshold as f64);
    detections.sort_by(|a, b| b.score.get().total_cmp(&a.score.get()));
    let mut kept: Vec<Detection> = Vec::new();
    for d in detections {
        if kept.len() >= options.max_detections {
            break;
        }
        let suppressed = kept.iter().any(|k| {
            (options.class_agnostic || k.class == d.class)
                && k.bbox.iou(&d.bbox) > options.iou_threshold
        });
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

/// Raw YOLOv8 output that does not have the expected shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("YOLOv8 output of {len} values does not fit [1, 4 + {classes} classes, {anchors} anchors]; check the model's manifest")]
pub struct YoloShapeError {
    /// Values received.
    pub len: usize,
    /// Classes expected.
    pub classes: usize,
    /// Anchors expected.
    pub anchors: usize,
}

/// Decodes YOLOv8's output `[1, 4 + classes, anchors]` (boxes as cx, cy, w, h in model
/// pixels, then one sigmoid score per class) into detections in model pixels, taking each
/// anchor's best class. Apply [`nms`] next, then map boxes back with
/// [`crate::preprocess::Geometry::to_original`].
pub fn decode_yolov8(
    output: &[f32],
    classes: usize,
    anchors: usize,
    score_threshold: f32,
) -> Result<Vec<Detection>, YoloShapeError> {
    if classes == 0 || output.len() != (4 + classes) * anchors {
        return Err(YoloShapeError {
            len: output.len(),
            classes,
            anchors,
        });
    }
    let row = |r: usize| &output[r * anchors..(r + 1) * anchors];
    let (cx, cy, w, h) = (row(0), row(1), row(2), row(3));
    let mut out = Vec::new();
    for a in 0..anchors {
        let (class, score) =
            (0..classes)
                .map(|c| (c, row(4 + c)[a]))
                .fold((0, f32::NEG_INFINITY), |best, cur| {
                    if cur.1 > best.1 {
                        cur
                    } else {
                        best
                    }
                });
        if score >= score_threshold {
            out.push(Detection {
                bbox: BoxXyxy::new(
                    cx[a] - w[a] / 2.0,
                    cy[a] - h[a] / 2.0,
                    cx[a] + w[a] / 2.0,
                    cy[a] + h[a] / 2.0,
                ),
                score: Probability::saturating(score as f64),
                class,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, score: f64, class: usize) -> Detection {
        Detection {
            bbox: BoxXyxy::new(x, 0.0, x + 10.0, 10.0),
            score: Probability::new(score).unwrap(),
            class,
        }
    }

    #[test]
    fn suppresses_overlaps_within_a_class_only() {
        let input = vec![
            det(0.0, 0.9, 0),
            det(1.0, 0.8, 0),
            det(1.0, 0.7, 1),
            det(30.0, 0.6, 0),
        ];
        let opts = NmsOptions {
            iou_threshold: 0.5,
            ..NmsOptions::default()
        };
        let kept = nms(input.clone(), &opts);
        assert_eq!(kept, vec![input[0], input[2], input[3]]);
        let agnostic = nms(
            input.clone(),
            &NmsOptions {
                class_agnostic: true,
                ..opts
            },
        );
        assert_eq!(agnostic, vec![input[0], input[3]]);
        let capped = nms(
            input,
            &NmsOptions {
                max_detections: 1,
                ..opts
            },
        );
        assert_eq!(capped.len(), 1);
    }

    #[test]
    fn decodes_yolov8_layout() {
        // Two anchors, one class: [cx, cy, w, h, score] per row.
        let out = [50.0, 10.0, 60.0, 20.0, 20.0, 4.0, 10.0, 4.0, 0.9, 0.1];
        let d = decode_yolov8(&out, 1, 2, 0.25).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].bbox, BoxXyxy::new(40.0, 55.0, 60.0, 65.0));
        assert_eq!(decode_yolov8(&out, 2, 2, 0.25).unwrap_err().len, 10);
    }
}
