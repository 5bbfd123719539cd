//! Detector evaluation as Ultralytics and the study report it: mAP50 and mAP50-95
//! (COCO-style, fv-core's pycocotools-checked code), precision and recall with the confusion
//! matrix at conf 0.25 / IoU 0.45, a breakdown by region, a PR curve and a picture grid.
//!
//! Inputs are prepared as fv-edge prepares them (fv-core letterbox), and boxes are compared in
//! the displayed image's pixels (after EXIF orientation).

use super::DetectConfig;
use crate::data::classify::LoadFailure;
use crate::data::detect::{eval_input, DetSample};
use crate::data::fracatlas::Region;
use crate::data::SplitPart;
use crate::models::yolov8::{decode, YoloV8};
use burn::tensor::{Device, Tensor, TensorData};
use fv_core::detection::{decode_yolov8, nms, NmsOptions, NmsSettings};
use fv_core::metrics::detection::{
    coco_ap, coco_ap_intervals, pr_curve, DetectionConfusion, GroundTruth, ImageBoxes, PrPoint,
};
use fv_core::preprocess::{Geometry, InputSpec};
use fv_core::{BoxXyxy, Detection, Probability};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One prepared evaluation image.
#[derive(Clone, Debug)]
pub struct EvalInput {
    /// The sample (ground truth, region).
    pub sample: DetSample,
    /// The model input, `[3, s, s]`.
    pub tensor: Vec<f32>,
    /// Maps model pixels back to the displayed image.
    pub geometry: Geometry,
}

/// The input spec a detector run is served with (the manifest's `input`).
pub fn input_spec(config: &DetectConfig) -> InputSpec {
    let (mean, std) = config.model.mean_std();
    InputSpec {
        mean: mean.to_vec(),
        std: std.to_vec(),
        ..InputSpec::yolo(config.image_size)
    }
}

/// Prepares `samples` in parallel; failures come back apart.
pub fn prepare(samples: &[DetSample], config: &DetectConfig) -> (Vec<EvalInput>, Vec<LoadFailure>) {
    let spec = input_spec(config);
    let results: Vec<Result<EvalInput, LoadFailure>> = samples
        .par_iter()
        .map(|s| {
            let p = eval_input(s, &spec)?;
            Ok(EvalInput {
                sample: s.clone(),
                tensor: p.tensor.data,
                geometry: p.geometry,
            })
        })
        .collect();
    crate::data::partition(results)
}

/// Evaluation keeps every box down to conf 0.001 (as Ultralytics' validation does, for mAP),
/// suppressed exactly as the edge suppresses them ([`NmsSettings::EDGE`], written into the
/// exported manifest), so that the box thresholds chosen on validation hold at the edge.
pub fn validation_nms() -> NmsOptions {
    NmsSettings::EDGE.with_floor(0.001)
}

/// Detections per input in displayed pixels, after NMS, in input order.
pub fn predict(
    model: &YoloV8,
    inputs: &[EvalInput],
    config: &DetectConfig,
    device: &Device,
) -> Vec<Vec<Detection>> {
    let s = config.image_size as usize;
    let classes = model.num_classes();
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(8) {
        let mut buf = Vec::with_capacity(chunk.len() * 3 * s * s);
        for i in chunk {
            buf.extend_from_slice(&i.tensor);
        }
        let x = Tensor::<4>::from_data(TensorData::new(buf, [chunk.len(), 3, s, s]), device);
        let y = decode(&model.forward(x), model.reg_max());
        let [_, _, anchors] = y.dims();
        let v: Vec<f32> = y
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 data");
        let per = (4 + classes) * anchors;
        for (k, input) in chunk.iter().enumerate() {
            out.push(postprocess(&v[k * per..(k + 1) * per], classes, input));
        }
    }
    out
}

/// Decoded output `[1, 4 + classes, anchors]` of one input → detections in displayed pixels.
pub fn postprocess(raw: &[f32], classes: usize, input: &EvalInput) -> Vec<Detection> {
    let anchors = raw.len() / (4 + classes);
    let dets = decode_yolov8(raw, classes, anchors, validation_nms().score_threshold)
        .expect("the output was sliced to its shape");
    nms(dets, &validation_nms())
        .into_iter()
        .map(|d| Detection {
            bbox: input
                .geometry
                .to_original(&d.bbox)
                .clamp_to(input.geometry.src_width, input.geometry.src_height),
            ..d
        })
        .collect()
}

/// Per input: the graph's raw output, and the detections made from it.
pub type OnnxPredictions = (Vec<Vec<f32>>, Vec<Vec<Detection>>);

/// Runs an exported detector in tract on every input: the raw outputs, and the detections.
pub fn predict_onnx(
    runner: &fv_runtime::TractEngine,
    inputs: &[EvalInput],
    classes: usize,
) -> anyhow::Result<OnnxPredictions> {
    let raw: Vec<Vec<f32>> = inputs
        .par_iter()
        .map(|i| {
            runner
                .run_values(&i.tensor)?
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("the detector graph has no output"))
        })
        .collect::<anyhow::Result<_>>()?;
    let dets = raw
        .iter()
        .zip(inputs)
        .map(|(r, i)| postprocess(r, classes, i))
        .collect();
    Ok((raw, dets))
}

/// Ground truth (class 0, fracture) and detections of each (input, prediction) pair.
fn image_boxes<'a>(
    pairs: impl Iterator<Item = (&'a EvalInput, &'a Vec<Detection>)>,
) -> Vec<ImageBoxes> {
    pairs
        .map(|(i, p)| ImageBoxes {
            ground_truth: i
                .sample
                .boxes
                .iter()
                .map(|&bbox| GroundTruth { bbox, class: 0 })
                .collect(),
            detections: p.clone(),
        })
        .collect()
}

/// Metrics of a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoxMetrics {
    /// Images evaluated.
    pub images: usize,
    /// Ground-truth boxes.
    pub boxes: usize,
    /// AP at IoU 0.5.
    pub map50: f64,
    /// AP over IoU 0.5:0.95.
    pub map50_95: f64,
}

impl BoxMetrics {
    fn of(pairs: &[(&EvalInput, &Vec<Detection>)]) -> Self {
        let ib = image_boxes(pairs.iter().copied());
        let ap = coco_ap(&ib, 1);
        BoxMetrics {
            images: pairs.len(),
            boxes: ib.iter().map(|i| i.ground_truth.len()).sum(),
            map50: ap.as_ref().map_or(0.0, |a| a.map50),
            map50_95: ap.as_ref().map_or(0.0, |a| a.map50_95),
        }
    }
}

/// One split's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// `valid` or `test`.
    pub split: SplitPart,
    /// Images evaluated.
    pub images: usize,
    /// Ground-truth boxes.
    pub boxes: usize,
    /// mAP at IoU 0.5.
    pub map50: f64,
    /// mAP at IoU 0.75.
    pub map75: f64,
    /// mAP over IoU 0.5:0.95.
    pub map50_95: f64,
    /// 95 % bootstrap interval of mAP50 over images ([`coco_ap_intervals`]).
    #[serde(default)]
    pub map50_interval: Option<[f64; 2]>,
    /// The same for mAP50-95.
    #[serde(default)]
    pub map50_95_interval: Option<[f64; 2]>,
    /// Precision at conf 0.25, IoU 0.45.
    pub precision: Option<f64>,
    /// Recall at conf 0.25, IoU 0.45.
    pub recall: Option<f64>,
    /// Confusion matrix at conf 0.25, IoU 0.45: rows predicted, columns true,
    /// `[fracture, background]`.
    pub confusion: Vec<Vec<u64>>,
    /// By region (`dataset.csv`).
    pub by_region: BTreeMap<Region, BoxMetrics>,
}

impl SplitMetrics {
    /// Scores `preds` against `inputs`' ground truth, without intervals (each epoch's
    /// validation needs the estimate alone; [`SplitMetrics::with_intervals`] adds them).
    pub fn new(split: SplitPart, inputs: &[EvalInput], preds: &[Vec<Detection>]) -> Self {
        let ib = image_boxes(inputs.iter().zip(preds));
        let ap = coco_ap(&ib, 1);
        let conf = DetectionConfusion::new(&ib, 1, 0.25, 0.45);
        let pr = conf.class_pr(0);
        let mut regions: BTreeMap<Region, Vec<(&EvalInput, &Vec<Detection>)>> = BTreeMap::new();
        for (i, p) in inputs.iter().zip(preds) {
            regions.entry(i.sample.region).or_default().push((i, p));
        }
        SplitMetrics {
            split,
            images: inputs.len(),
            boxes: ib.iter().map(|i| i.ground_truth.len()).sum(),
            map50: ap.as_ref().map_or(0.0, |a| a.map50),
            map75: ap.as_ref().map_or(0.0, |a| a.map75),
            map50_95: ap.as_ref().map_or(0.0, |a| a.map50_95),
            map50_interval: None,
            map50_95_interval: None,
            precision: pr.precision,
            recall: pr.recall,
            confusion: conf.matrix,
            by_region: regions
                .into_iter()
                .map(|(r, pairs)| (r, BoxMetrics::of(&pairs)))
                .collect(),
        }
    }

    /// These metrics with the 95 % bootstrap intervals of both mAPs over whole images
    /// ([`coco_ap_intervals`]), for the figures a run reports.
    pub fn with_intervals(mut self, inputs: &[EvalInput], preds: &[Vec<Detection>]) -> Self {
        let [m50, m50_95] = coco_ap_intervals(&image_boxes(inputs.iter().zip(preds)), 1);
        self.map50_interval = m50.map(|(l, h)| [l, h]);
        self.map50_95_interval = m50_95.map(|(l, h)| [l, h]);
        self
    }
}

/// Box score thresholds chosen on validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoxThresholds {
    /// Boxes at or above `suspicious` are shown as suspicious, at or above `definite` as
    /// definite: the manifest's own type, written into it as chosen.
    #[serde(flatten)]
    pub scores: fv_core::manifest::Thresholds,
    /// How they were chosen.
    pub rule: String,
}

impl BoxThresholds {
    /// `definite`: the score that maximizes F1 at IoU 0.5 on validation (Ultralytics reports
    /// its curves at that point). `suspicious`: the highest score at which validation recall
    /// reaches 0.8 (or the highest recall reached above 0.05), never above `definite` and
    /// never below 0.05, so a sensitive reading does not flood the screen.
    pub fn choose(inputs: &[EvalInput], preds: &[Vec<Detection>]) -> Self {
        let curve = scored_curve(inputs, preds);
        let mut definite = (0.25, -1.0);
        for c in &curve {
            let f1 = 2.0 * c.precision * c.recall / (c.precision + c.recall).max(1e-12);
            if f1 > definite.1 {
                definite = (c.score, f1);
            }
        }
        let floor = 0.05;
        let reachable = curve
            .iter()
            .filter(|c| c.score >= floor)
            .map(|c| c.recall)
            .fold(0.0, f64::max);
        let target = reachable.min(0.8);
        let suspicious = curve
            .iter()
            .find(|c| c.recall >= target && c.score >= floor)
            .map_or(floor, |c| c.score)
            .min(definite.0)
            .max(floor.min(definite.0));
        BoxThresholds {
            scores: fv_core::manifest::Thresholds {
                suspicious: Probability::saturating(suspicious),
                definite: Probability::saturating(definite.0),
            },
            rule: format!(
                "definite: best validation F1 at IoU 0.5 ({:.3}); suspicious: validation recall {:.2} reached",
                definite.1.max(0.0),
                target
            ),
        }
    }
}

/// The precision–recall curve at IoU 0.5, one point per detection by falling score.
fn scored_curve(inputs: &[EvalInput], preds: &[Vec<Detection>]) -> Vec<PrPoint> {
    pr_curve(&image_boxes(inputs.iter().zip(preds)), 0, 0.5)
}

/// Precision–recall points at IoU 0.5 over all detections, by falling score (greedy matching
/// per image, highest score first, as COCO).
pub fn pr_points(inputs: &[EvalInput], preds: &[Vec<Detection>]) -> Vec<(f64, f64)> {
    std::iter::once((0.0, 1.0))
        .chain(
            scored_curve(inputs, preds)
                .into_iter()
                .map(|p| (p.recall, p.precision)),
        )
        .collect()
}

/// A grid of up to 8 images: ground truth (green) on the left, predictions at conf ≥ 0.25
/// (red) on the right, each 320 pixels.
pub fn draw_grid(
    path: &std::path::Path,
    inputs: &[EvalInput],
    preds: &[Vec<Detection>],
) -> anyhow::Result<()> {
    const CELL: u32 = 320;
    let n = inputs.len().min(8) as u32;
    anyhow::ensure!(n > 0, "no images to draw");
    let mut canvas = image::RgbImage::from_pixel(2 * CELL, n * CELL, image::Rgb([0, 0, 0]));
    for (row, (input, p)) in inputs.iter().zip(preds).take(n as usize).enumerate() {
        let d = fv_core::imaging::decode_file(&input.sample.path, &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let g = d.image.to_gray8();
        let (w, h) = g.dimensions();
        let r = CELL as f32 / w.max(h) as f32;
        let small = image::imageops::resize(
            &g,
            ((w as f32 * r) as u32).max(1),
            ((h as f32 * r) as u32).max(1),
            image::imageops::FilterType::Triangle,
        );
        let rgb = image::DynamicImage::ImageLuma8(small).to_rgb8();
        let y0 = row as u32 * CELL;
        for col in 0..2u32 {
            image::imageops::replace(&mut canvas, &rgb, (col * CELL) as i64, y0 as i64);
        }
        let draw = |canvas: &mut image::RgbImage, b: &BoxXyxy, x0: u32, c: [u8; 3]| {
            let s = |v: f32| (v * r).max(0.0) as u32;
            let (x1, y1, x2, y2) = (
                s(b.x1),
                s(b.y1),
                s(b.x2).min(CELL - 1),
                s(b.y2).min(CELL - 1),
            );
            for x in x1..=x2 {
                for y in [y1, y2] {
                    canvas.put_pixel(x0 + x, y0 + y.min(CELL - 1), image::Rgb(c));
                }
            }
            for y in y1..=y2 {
                for x in [x1, x2] {
                    canvas.put_pixel(x0 + x.min(CELL - 1), y0 + y, image::Rgb(c));
                }
            }
        };
        for b in &input.sample.boxes {
            draw(&mut canvas, b, 0, [0, 220, 0]);
        }
        for det in p.iter().filter(|d| d.score.get() >= 0.25) {
            draw(&mut canvas, &det.bbox, CELL, [230, 30, 30]);
        }
    }
    canvas
        .save(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::BoxThresholds;

    #[test]
    fn box_thresholds_keep_the_file_shape_and_refuse_a_score_outside_zero_one() {
        let old = r#"{"suspicious": 0.059, "definite": 0.173, "rule": "as chosen"}"#;
        let t: BoxThresholds = serde_json::from_str(old).unwrap();
        assert_eq!(t.scores.definite.get(), 0.173);
        let again: serde_json::Value = serde_json::to_value(&t).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );
        let bad = r#"{"suspicious": 1.5, "definite": 0.173, "rule": "x"}"#;
        assert!(serde_json::from_str::<BoxThresholds>(bad).is_err());
    }
}
