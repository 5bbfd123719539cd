//! YOLOv8's detection loss: BCE on the soft class targets of the task-aligned assigner, CIoU
//! and distribution focal loss (DFL) on the foreground anchors, weighted 0.5 / 7.5 / 1.5 and
//! normalized by the sum of the class targets, as Ultralytics' `v8DetectionLoss`.

use super::assign::{assign, AssignerConfig, Assignment, Xyxy};
use crate::models::yolov8::{anchors, dfl_expectation, dist_to_xyxy, RawPrediction};
use burn::tensor::activation::{log_softmax, relu, sigmoid};
use burn::tensor::{Tensor, TensorData};

/// Loss gains (Ultralytics' defaults).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossGains {
    /// CIoU box loss.
    pub box_: f32,
    /// Class BCE.
    pub cls: f32,
    /// Distribution focal loss.
    pub dfl: f32,
}

impl Default for LossGains {
    fn default() -> Self {
        LossGains {
            box_: 7.5,
            cls: 0.5,
            dfl: 1.5,
        }
    }
}

/// The loss's parts, for the log (already scaled by their gains, before the batch factor).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// Box (CIoU).
    pub box_: f64,
    /// Class (BCE).
    pub cls: f64,
    /// Distribution focal loss of the box edges.
    pub dfl: f64,
    /// Foreground anchors in the batch.
    pub foreground: usize,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// Elementwise CIoU of boxes laid out as `[batch, 4, anchors]` (x1, y1, x2, y2).
fn ciou_tensor(p: Tensor<3>, t: Tensor<3>) -> Tensor<3> {
    const EPS: f64 = 1e-7;
    let c = |x: &Tensor<3>, k: usize| x.clone().narrow(1, k, 1);
    let (px1, py1, px2, py2) = (c(&p, 0), c(&p, 1), c(&p, 2), c(&p, 3));
    let (tx1, ty1, tx2, ty2) = (c(&t, 0), c(&t, 1), c(&t, 2), c(&t, 3));
    let (w1, h1) = (px2.clone() - px1.clone(), py2.clone() - py1.clone() + EPS);
    let (w2, h2) = (tx2.clone() - tx1.clone(), ty2.clone() - ty1.clone() + EPS);
    let iw = relu(px2.clone().min_pair(tx2.clone()) - px1.clone().max_pair(tx1.clone()));
    let ih = relu(py2.clone().min_pair(ty2.clone()) - py1.clone().max_pair(ty1.clone()));
    let inter = iw * ih;
    let union = w1.clone() * h1.clone() + w2.clone() * h2.clone() - inter.clone() + EPS;
    let iou = inter / union;
    let cw = px2.clone().max_pair(tx2.clone()) - px1.clone().min_pair(tx1.clone());
    let ch = py2.clone().max_pair(ty2.clone()) - py1.clone().min_pair(ty1.clone());
    let c2 = cw.powi_scalar(2) + ch.powi_scalar(2) + EPS;
    let rho2 =
        ((tx1 + tx2 - px1 - px2).powi_scalar(2) + (ty1 + ty2 - py1 - py2).powi_scalar(2)) / 4.0;
    let v =
        ((w2 / h2).atan() - (w1 / h1).atan()).powi_scalar(2) * (4.0 / std::f64::consts::PI.powi(2));
    // α is a weight, not a path for gradients (as in the reference).
    let alpha = (v.clone() / (v.clone() - iou.clone() + (1.0 + EPS))).detach();
    iou - (rho2 / c2 + v * alpha)
}

/// The loss of one batch. `gt[i]` holds image `i`'s boxes (pixels) and classes.
/// Returns the scalar to minimize (times the batch size, as Ultralytics) and its parts.
pub fn detection_loss(
    raw: &RawPrediction,
    gt: &[Vec<(Xyxy, usize)>],
    reg_max: usize,
    gains: &LossGains,
    assigner: &AssignerConfig,
) -> (Tensor<1>, LossParts) {
    let device = raw.boxes.device();
    let [b, classes, a] = raw.scores.dims();
    let (points, strides) = anchors(&raw.grids);
    let dist = dfl_expectation(raw.boxes.clone(), reg_max); // [b, 4, a], grid units

    // Detached predictions in pixels for the assigner.
    let dist_v = to_vec(dist.clone().detach());
    let score_v = to_vec(sigmoid(raw.scores.clone().detach()));
    let mut assignments: Vec<Assignment> = Vec::with_capacity(b);
    for (i, gt_i) in gt.iter().enumerate() {
        let mut boxes = Vec::with_capacity(a);
        let mut scores = vec![0.0f32; a * classes];
        let mut pix = Vec::with_capacity(a);
        for k in 0..a {
            let d = |s: usize| dist_v[(i * 4 + s) * a + k];
            let (p, st) = (points[k], strides[k]);
            boxes.push([
                (p[0] - d(0)) * st,
                (p[1] - d(1)) * st,
                (p[0] + d(2)) * st,
                (p[1] + d(3)) * st,
            ]);
            pix.push([p[0] * st, p[1] * st]);
            for c in 0..classes {
                scores[k * classes + c] = score_v[(i * classes + c) * a + k];
            }
        }
        assignments.push(assign(assigner, &scores, &boxes, &pix, gt_i, classes));
    }

    // Targets as `[batch, ·, anchors]` buffers.
    let mut t_scores = vec![0.0f32; b * classes * a];
    let mut t_boxes = vec![0.0f32; b * 4 * a];
    let mut weight = vec![0.0f32; b * a];
    let mut t_dist = vec![0.0f32; b * 4 * reg_max * a];
    let mut foreground = 0usize;
    for (i, asg) in assignments.iter().enumerate() {
        for k in 0..a {
            let (p, st) = (points[k], strides[k]);
            let mut w = 0.0;
            for c in 0..classes {
                let s = asg.scores[k * classes + c];
                t_scores[(i * classes + c) * a + k] = s;
                w += s;
            }
            // Background anchors get a harmless unit box so CIoU stays finite (weight 0).
            let tb = match asg.gt[k] {
                Some(g) => {
                    foreground += 1;
                    weight[i * a + k] = w;
                    let bx = gt[i][g].0;
                    [bx[0] / st, bx[1] / st, bx[2] / st, bx[3] / st]
                }
                None => [p[0] - 0.5, p[1] - 0.5, p[0] + 0.5, p[1] + 0.5],
            };
            for s in 0..4 {
                t_boxes[(i * 4 + s) * a + k] = tb[s];
            }
            if asg.gt[k].is_some() {
                let ltrb = [p[0] - tb[0], p[1] - tb[1], tb[2] - p[0], tb[3] - p[1]];
                for (s, &d) in ltrb.iter().enumerate() {
                    let d = d.clamp(0.0, reg_max as f32 - 1.0 - 0.01);
                    let lo = d.floor() as usize;
                    let frac = d - lo as f32;
                    t_dist[((i * 4 + s) * reg_max + lo) * a + k] = 1.0 - frac;
                    t_dist[((i * 4 + s) * reg_max + lo + 1) * a + k] = frac;
                }
            }
        }
    }
    let target_sum = t_scores.iter().sum::<f32>().max(1.0);
    let t3 = |v: Vec<f32>, c: usize| Tensor::<3>::from_data(TensorData::new(v, [b, c, a]), &device);
    let t_scores = t3(t_scores, classes);
    let t_boxes = t3(t_boxes, 4);
    let weight = t3(weight, 1);
    let t_dist = Tensor::<4>::from_data(TensorData::new(t_dist, [b, 4, reg_max, a]), &device);

    // Class: BCE with logits, summed, over the target sum.
    let x = raw.scores.clone();
    let bce = relu(x.clone()) - x.clone() * t_scores + (-x.abs()).exp().log1p();
    let loss_cls = bce.sum() / target_sum;

    // Box: 1 − CIoU on foreground anchors, weighted by their class targets.
    let pred = Tensor::cat(dist_to_xyxy(&dist, &points).to_vec(), 1);
    let loss_box = ((-ciou_tensor(pred, t_boxes) + 1.0) * weight.clone()).sum() / target_sum;

    // DFL: cross-entropy of each side's bins against the two-bin target, mean over sides.
    let logp = log_softmax(raw.boxes.clone().reshape([b, 4, reg_max, a]), 2);
    let ce = -(logp * t_dist).sum_dim(2).reshape([b, 4, a]);
    let loss_dfl = (ce.mean_dim(1) * weight).sum() / target_sum;

    let parts_t = [
        loss_box * gains.box_,
        loss_cls * gains.cls,
        loss_dfl * gains.dfl,
    ];
    let values: Vec<f64> = parts_t
        .iter()
        .map(|t| t.clone().into_scalar::<f32>() as f64)
        .collect();
    let [lb, lc, ld] = parts_t;
    let total = (lb + lc + ld) * b as f32;
    (
        total,
        LossParts {
            box_: values[0],
            cls: values[1],
            dfl: values[2],
            foreground,
        },
    )
}
