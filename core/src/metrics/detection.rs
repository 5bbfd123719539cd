//! Detection metrics: COCO average precision (what papers report as mAP50 and mAP50-95) and
//! the Ultralytics-style confusion matrix with precision and recall at one confidence.

use crate::{BoxXyxy, Detection};
use serde::{Deserialize, Serialize};

/// One ground-truth box.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The box.
    pub bbox: BoxXyxy,
    /// Class index.
    pub class: usize,
}

/// Ground truth and detections for one image, both in the same pixels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageBoxes {
    /// The annotated boxes.
    pub ground_truth: Vec<GroundTruth>,
    /// The model's detections.
    pub detections: Vec<Detection>,
}

/// IoU in double precision, as pycocotools computes it, so that matches at a threshold's
/// edge fall the same way.
fn iou64(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let (ax1, ay1, ax2, ay2) = (a.x1 as f64, a.y1 as f64, a.x2 as f64, a.y2 as f64);
    let (bx1, by1, bx2, by2) = (b.x1 as f64, b.y1 as f64, b.x2 as f64, b.y2 as f64);
    let iw = (ax2.min(bx2) - ax1.max(bx1)).max(0.0);
    let ih = (ay2.min(by2) - ay1.max(by1)).max(0.0);
    let inter = iw * ih;
    let union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// The ten IoU thresholds 0.50:0.05:0.95, computed as numpy's `linspace` does so that
/// comparisons match pycocotools bit for bit.
pub fn coco_iou_thresholds() -> [f64; 10] {
    let step = (0.95 - 0.5) / 9.0;
    let mut t = [0.0; 10];
    for (i, v) in t.iter_mut().enumerate() {
        *v = 0.5 + i as f64 * step;
    }
    t[9] = 0.95;
    t
}

fn recall_thresholds() -> [f64; 101] {
    let step = 1.0 / 100.0;
    let mut r = [0.0; 101];
    for (i, v) in r.iter_mut().enumerate() {
        *v = i as f64 * step;
    }
    r[100] = 1.0;
    r
}

/// COCO AP for one class, per IoU threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    /// Class index.
    pub class: usize,
    /// Ground-truth boxes of this class.
    pub n_ground_truth: usize,
    /// AP at each of [`coco_iou_thresholds`].
    pub ap: [f64; 10],
    /// Recall reached at each threshold with up to 100 detections per image.
    pub recall: [f64; 10],
}

/// COCO-style AP over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoAp {
    /// AP at IoU 0.50, averaged over classes with ground truth.
    pub map50: f64,
    /// AP at IoU 0.75.
    pub map75: f64,
    /// AP averaged over IoU 0.50:0.95.
    pub map50_95: f64,
    /// Average precision of each class.
    pub per_class: Vec<ClassAp>,
}

/// 95 % bootstrap intervals of mAP50 and of mAP50-95 over `images` (1 000 draws of whole
/// images with replacement, images with and without ground truth resampled apart, from a
/// fixed seed). `None` where an interval is undefined (no ground truth).
pub fn coco_ap_intervals(images: &[ImageBoxes], num_classes: usize) -> [Option<(f64, f64)>; 2] {
    let has_truth = |i: &ImageBoxes| !i.ground_truth.is_empty();
    let of = |f: fn(&CocoAp) -> f64| {
        super::bootstrap_by(
            images,
            has_truth,
            |draw| coco_ap(draw, num_classes).map(|a| f(&a)),
            1000,
            29,
        )
    };
    [of(|a| a.map50), of(|a| a.map50_95)]
}

/// COCO detection evaluation (pycocotools' `COCOeval`, bbox, area "all", up to 100
/// detections per image, 101-point interpolated precision).
///
/// Equal scores in different images keep image order, as pycocotools keeps image-id order.
/// Classes without ground truth are left out of the means; `None` when no class has any.
pub fn coco_ap(images: &[ImageBoxes], num_classes: usize) -> Option<CocoAp> {
    const MAX_DETS: usize = 100;
    let iou_thr = coco_iou_thresholds();
    let rec_thr = recall_thresholds();
    let mut per_class = Vec::new();
    for class in 0..num_classes {
        // (score, matched at each threshold) for every kept detection, in image order.
        let mut dets: Vec<(f64, [bool; 10])> = Vec::new();
        let mut n_gt = 0;
        for img in images {
            let gts: Vec<&BoxXyxy> = img
                .ground_truth
                .iter()
                .filter(|g| g.class == class)
                .map(|g| &g.bbox)
                .collect();
            let mut ds: Vec<&Detection> =
                img.detections.iter().filter(|d| d.class == class).collect();
            ds.sort_by(|a, b| b.score.get().total_cmp(&a.score.get()));
            ds.truncate(MAX_DETS);
            n_gt += gts.len();
            let ious: Vec<Vec<f64>> = ds
                .iter()
                .map(|d| gts.iter().map(|g| iou64(&d.bbox, g)).collect())
                .collect();
            let mut matched = vec![[false; 10]; ds.len()];
            for (t, &thr) in iou_thr.iter().enumerate() {
                let mut gt_taken = vec![false; gts.len()];
                for (d, row) in ious.iter().enumerate() {
                    // Best free ground truth at or above the threshold; ties go to the later one.
                    let mut best = thr.min(1.0 - 1e-10);
                    let mut m = None;
                    for (g, &iou) in row.iter().enumerate() {
                        if gt_taken[g] || iou < best {
                            continue;
                        }
                        best = iou;
                        m = Some(g);
                    }
                    if let Some(g) = m {
                        gt_taken[g] = true;
                        matched[d][t] = true;
                    }
                }
            }
            dets.extend(ds.iter().zip(matched).map(|(d, m)| (d.score.get(), m)));
        }
        if n_gt == 0 {
            continue;
        }
        // Stable sort keeps image order among equal scores.
        dets.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ap = [0.0; 10];
        let mut recall = [0.0; 10];
        for t in 0..10 {
            let (mut tp, mut fp) = (0.0f64, 0.0f64);
            let mut rc = Vec::with_capacity(dets.len());
            let mut pr = Vec::with_capacity(dets.len());
            for (_, m) in &dets {
                if m[t] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                rc.push(tp / n_gt as f64);
                pr.push(tp / (tp + fp + f64::EPSILON));
            }
            recall[t] = rc.last().copied().unwrap_or(0.0);
            // Precision envelope: the best precision at any recall at least this high.
            for i in (1..pr.len()).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let sum: f64 = rec_thr
                .iter()
                .map(|&r| {
                    let idx = rc.partition_point(|&x| x < r);
                    pr.get(idx).copied().unwrap_or(0.0)
                })
                .sum();
            ap[t] = sum / rec_thr.len() as f64;
        }
        per_class.push(ClassAp {
            class,
            n_ground_truth: n_gt,
            ap,
            recall,
        });
    }
    if per_class.is_empty() {
        return None;
    }
    let n = per_class.len() as f64;
    let mean_at = |t: usize| per_class.iter().map(|c| c.ap[t]).sum::<f64>() / n;
    let map50_95 = per_class
        .iter()
        .map(|c| c.ap.iter().sum::<f64>() / 10.0)
        .sum::<f64>()
        / n;
    Some(CocoAp {
        map50: mean_at(0),
        map75: mean_at(5),
        map50_95,
        per_class,
    })
}

/// The Ultralytics detection confusion matrix: `matrix[predicted][true]`, with index
/// `num_classes` standing for background.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionConfusion {
    /// Number of object classes.
    pub num_classes: usize,
    /// `(num_classes + 1)²` counts, row = predicted, column = true.
    pub matrix: Vec<Vec<u64>>,
}

/// Precision and recall for one class from the confusion matrix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassPr {
    /// Detections matched to a box of this class.
    pub tp: u64,
    /// Detections of this class matched to nothing, or to another class.
    pub fp: u64,
    /// Boxes of this class that no detection matched.
    pub fn_: u64,
    /// `tp / (tp + fp)`, `None` with no detections.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`, `None` with no boxes.
    pub recall: Option<f64>,
}

impl DetectionConfusion {
    /// Matches detections scoring above `conf` to ground truth overlapping by more than
    /// `iou` (Ultralytics uses 0.25 and 0.45): candidate pairs are taken by decreasing IoU,
    /// each detection and each box at most once, class-agnostically, so a box found with
    /// the wrong class shows off the diagonal.
    ///
    /// One deliberate difference: Ultralytics (8.x) skips counting unmatched detections in
    /// an image where nothing matched, which hides false alarms on images without
    /// fractures and flatters precision. Here every unmatched detection is a false positive.
    pub fn new(images: &[ImageBoxes], num_classes: usize, conf: f64, iou: f64) -> Self {
        let bg = num_classes;
        let mut matrix = vec![vec![0u64; num_classes + 1]; num_classes + 1];
        for img in images {
            let dets: Vec<&Detection> = img
                .detections
                .iter()
                .filter(|d| d.score.get() > conf && d.class < num_classes)
                .collect();
            let gts: Vec<&GroundTruth> = img
                .ground_truth
                .iter()
                .filter(|g| g.class < num_classes)
                .collect();
            let mut pairs: Vec<(usize, usize, f64)> = Vec::new();
            for (g, gt) in gts.iter().enumerate() {
                for (d, det) in dets.iter().enumerate() {
                    let v = iou64(&gt.bbox, &det.bbox);
                    if v > iou {
                        pairs.push((g, d, v));
                    }
                }
            }
            pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut gt_match = vec![None; gts.len()];
            let mut det_taken = vec![false; dets.len()];
            for (g, d, _) in pairs {
                if gt_match[g].is_none() && !det_taken[d] {
                    gt_match[g] = Some(d);
                    det_taken[d] = true;
                }
            }
            for (g, gt) in gts.iter().enumerate() {
                match gt_match[g] {
                    Some(d) => matrix[dets[d].class][gt.class] += 1,
                    None => matrix[bg][gt.class] += 1,
                }
            }
            for (d, det) in dets.iter().enumerate() {
                if !det_taken[d] {
                    matrix[det.class][bg] += 1;
                }
            }
        }
        DetectionConfusion {
            num_classes,
            matrix,
        }
    }

    /// Precision and recall of one class, as Ultralytics reads them off the matrix.
    pub fn class_pr(&self, class: usize) -> ClassPr {
        let tp = self.matrix[class][class];
        let row: u64 = self.matrix[class].iter().sum();
        let col: u64 = self.matrix.iter().map(|r| r[class]).sum();
        let (fp, fn_) = (row - tp, col - tp);
        ClassPr {
            tp,
            fp,
            fn_,
            precision: (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64),
            recall: (tp + fn_ > 0).then(|| tp as f64 / (tp + fn_) as f64),
        }
    }
}

/// One point of a precision–recall curve: after accepting every detection scoring at least
/// `score`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    /// The detection's score.
    pub score: f64,
    /// Ground-truth boxes found so far / all ground-truth boxes.
    pub recall: f64,
    /// Detections that found a box / detections so far.
    pub precision: f64,
}

/// The precision–recall curve of `class` at one IoU threshold, one point per detection by
/// falling score (class-specific; for a PR figure and for choosing score thresholds). In each
/// image, detections are matched highest score first to the unmatched box of `class`
/// overlapping them most, at IoU ≥ `iou`, as COCO matches.
pub fn pr_curve(images: &[ImageBoxes], class: usize, iou: f64) -> Vec<PrPoint> {
    let total: usize = images
        .iter()
        .map(|i| i.ground_truth.iter().filter(|g| g.class == class).count())
        .sum();
    let mut scored: Vec<(f64, bool)> = Vec::new();
    for img in images {
        let gts: Vec<&BoxXyxy> = img
            .ground_truth
            .iter()
            .filter(|g| g.class == class)
            .map(|g| &g.bbox)
            .collect();
        let mut used = vec![false; gts.len()];
        let mut dets: Vec<&Detection> =
            img.detections.iter().filter(|d| d.class == class).collect();
        dets.sort_by(|a, b| b.score.get().total_cmp(&a.score.get()));
        for d in dets {
            let best = gts
                .iter()
                .enumerate()
                .filter(|(k, _)| !used[*k])
                .map(|(k, g)| (k, iou64(g, &d.bbox)))
                .filter(|(_, o)| *o >= iou)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((k, _)) = best {
                used[k] = true;
            }
            scored.push((d.score.get(), best.is_some()));
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    scored
        .into_iter()
        .map(|(score, hit)| {
            if hit {
                tp += 1
            } else {
                fp += 1
            }
            PrPoint {
                score,
                recall: tp as f64 / total.max(1) as f64,
                precision: tp as f64 / (tp + fp) as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Probability;

    fn gt(x: f32) -> GroundTruth {
        GroundTruth {
            bbox: BoxXyxy::new(x, 0.0, x + 10.0, 10.0),
            class: 0,
        }
    }
    fn det(x: f32, s: f64) -> Detection {
        Detection {
            bbox: BoxXyxy::new(x, 0.0, x + 10.0, 10.0),
            score: Probability::new(s).unwrap(),
            class: 0,
        }
    }

    #[test]
    fn map_intervals_hold_the_estimate_and_resample_whole_images() {
        // Half the fractured images found, half missed with a confident false alarm, and
        // images without ground truth that carry false alarms of their own.
        let images: Vec<ImageBoxes> = (0..40)
            .map(|i| match i % 4 {
                0 => ImageBoxes {
                    ground_truth: vec![gt(0.0)],
                    detections: vec![det(0.0, 0.5 + i as f64 / 100.0)],
                },
                1 => ImageBoxes {
                    ground_truth: vec![gt(0.0)],
                    detections: vec![det(60.0, 0.7)],
                },
                _ => ImageBoxes {
                    ground_truth: vec![],
                    detections: vec![det(30.0, 0.2 + i as f64 / 100.0)],
                },
            })
            .collect();
        let ap = coco_ap(&images, 1).unwrap();
        let [m50, m50_95] = coco_ap_intervals(&images, 1);
        let (lo, hi) = m50.unwrap();
        assert!(
            lo <= ap.map50 && ap.map50 <= hi && lo < hi,
            "{lo} {} {hi}",
            ap.map50
        );
        let (lo, hi) = m50_95.unwrap();
        assert!(lo <= ap.map50_95 && ap.map50_95 <= hi && lo < hi);
        // Without ground truth there is no AP and no interval.
        let none: Vec<ImageBoxes> = images.iter().skip(2).step_by(4).cloned().collect();
        assert_eq!(coco_ap_intervals(&none, 1), [None, None]);
    }

    #[test]
    fn perfect_detections_give_ap_one() {
        let imgs = vec![ImageBoxes {
            ground_truth: vec![gt(0.0), gt(50.0)],
            detections: vec![det(0.0, 0.9), det(50.0, 0.8)],
        }];
        let ap = coco_ap(&imgs, 1).unwrap();
        assert_eq!(ap.map50, 1.0);
        assert_eq!(ap.map50_95, 1.0);
    }

    #[test]
    fn a_false_alarm_ranked_first_costs_precision() {
        let imgs = vec![
            ImageBoxes {
                ground_truth: vec![gt(0.0)],
                detections: vec![det(0.0, 0.5)],
            },
            ImageBoxes {
                ground_truth: vec![],
                detections: vec![det(0.0, 0.9)],
            },
        ];
        // Recall reaches 1 at precision 1/2 only.
        assert!((coco_ap(&imgs, 1).unwrap().map50 - 0.5).abs() < 1e-9);
        let cm = DetectionConfusion::new(&imgs, 1, 0.25, 0.45);
        let pr = cm.class_pr(0);
        assert_eq!((pr.tp, pr.fp, pr.fn_), (1, 1, 0));
    }

    #[test]
    fn no_ground_truth_gives_none() {
        let imgs = vec![ImageBoxes {
            ground_truth: vec![],
            detections: vec![det(0.0, 0.9)],
        }];
        assert!(coco_ap(&imgs, 1).is_none());
    }

    #[test]
    fn pr_curve_walks_detections_by_score_and_matches_each_box_once() {
        let g = |x: f32| GroundTruth {
            bbox: BoxXyxy::new(x, 0.0, x + 10.0, 10.0),
            class: 0,
        };
        let d = |x: f32, s: f64| Detection {
            bbox: BoxXyxy::new(x, 0.0, x + 10.0, 10.0),
            score: crate::Probability::new(s).unwrap(),
            class: 0,
        };
        let images = [ImageBoxes {
            ground_truth: vec![g(0.0), g(50.0)],
            // A duplicate of the first box, a hit on it, a miss, then the second box.
            detections: vec![d(1.0, 0.8), d(0.0, 0.9), d(100.0, 0.5), d(50.0, 0.3)],
        }];
        let c = pr_curve(&images, 0, 0.5);
        let got: Vec<(f64, f64, f64)> =
            c.iter().map(|p| (p.score, p.recall, p.precision)).collect();
        assert_eq!(
            got,
            vec![
                (0.9, 0.5, 1.0),
                (0.8, 0.5, 0.5),
                (0.5, 0.5, 1.0 / 3.0),
                (0.3, 1.0, 0.5)
            ]
        );
        assert!(pr_curve(&images, 1, 0.5).is_empty());
    }
}
