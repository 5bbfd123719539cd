//! The task-aligned assigner (TOOD, Feng et al. 2021) as YOLOv8 trains with it: which anchors
//! learn which ground-truth box, and how confident each should become.
//!
//! It runs on the CPU in plain Rust, per image: it needs only the detached predictions, no
//! gradient flows through it, and a few hundred ground-truth/anchor pairs per image are cheaper
//! here than as dense `[batch, boxes, anchors]` tensors.

pub use crate::data::detect::Xyxy;

/// The assigner's settings (Ultralytics' v8 loss: top 10, α 0.5, β 6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AssignerConfig {
    /// Candidates per ground-truth box.
    pub topk: usize,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f32,
    /// Exponent of the IoU in the alignment metric.
    pub beta: f32,
    /// Ground-truth sides shorter than this (pixels) are widened to it about their centre when
    /// choosing candidate anchors, so a thin fracture line still owns some anchors
    /// (Ultralytics ≥ 8.4 uses the second stride, 16).
    pub min_side: f32,
}

impl Default for AssignerConfig {
    fn default() -> Self {
        AssignerConfig {
            topk: 10,
            alpha: 0.5,
            beta: 6.0,
            min_side: 16.0,
        }
    }
}

/// What one image's anchors should learn.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Per anchor: the ground-truth index it regresses to, if it is foreground.
    pub gt: Vec<Option<usize>>,
    /// Per anchor and class (row-major `[anchors, classes]`): the soft class target.
    pub scores: Vec<f32>,
}

impl Assignment {
    /// Foreground anchors.
    pub fn foreground(&self) -> usize {
        self.gt.iter().filter(|g| g.is_some()).count()
    }
}

/// Complete IoU (Zheng et al. 2020): IoU minus the normalized centre distance and an
/// aspect-ratio term.
pub fn ciou(a: &Xyxy, b: &Xyxy) -> f32 {
    const EPS: f32 = 1e-7;
    let (w1, h1) = (a[2] - a[0], a[3] - a[1] + EPS);
    let (w2, h2) = (b[2] - b[0], b[3] - b[1] + EPS);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = w1 * h1 + w2 * h2 - inter + EPS;
    let iou = inter / union;
    let cw = a[2].max(b[2]) - a[0].min(b[0]);
    let ch = a[3].max(b[3]) - a[1].min(b[1]);
    let c2 = cw * cw + ch * ch + EPS;
    let rho2 = ((b[0] + b[2] - a[0] - a[2]).powi(2) + (b[1] + b[3] - a[1] - a[3]).powi(2)) / 4.0;
    let v = (4.0 / std::f32::consts::PI.powi(2)) * ((w2 / h2).atan() - (w1 / h1).atan()).powi(2);
    let alpha = v / (v - iou + (1.0 + EPS));
    iou - (rho2 / c2 + v * alpha)
}

/// Assigns one image's anchors.
///
/// - `scores`: sigmoid class scores, row-major `[anchors, classes]`;
/// - `boxes`: predicted boxes in pixels, one per anchor;
/// - `points`: anchor centres in pixels;
/// - `gt`: ground-truth boxes in pixels with their class.
pub fn assign(
    cfg: &AssignerConfig,
    scores: &[f32],
    boxes: &[Xyxy],
    points: &[[f32; 2]],
    gt: &[(Xyxy, usize)],
    classes: usize,
) -> Assignment {
    let a_n = points.len();
    let mut out = Assignment {
        gt: vec![None; a_n],
        scores: vec![0.0; a_n * classes],
    };
    if gt.is_empty() {
        return out;
    }
    // Per ground truth: (anchor, alignment, overlap) for every anchor inside it.
    let mut cands: Vec<Vec<(usize, f32, f32)>> = Vec::with_capacity(gt.len());
    for &(b, class) in gt {
        let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let w = (b[2] - b[0]).max(cfg.min_side) / 2.0;
        let h = (b[3] - b[1]).max(cfg.min_side) / 2.0;
        let inside = [cx - w, cy - h, cx + w, cy + h];
        let mut c: Vec<(usize, f32, f32)> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                const EPS: f32 = 1e-9;
                p[0] - inside[0] > EPS
                    && p[1] - inside[1] > EPS
                    && inside[2] - p[0] > EPS
                    && inside[3] - p[1] > EPS
            })
            .map(|(a, _)| {
                let overlap = ciou(&b, &boxes[a]).max(0.0);
                let s = scores[a * classes + class];
                (a, s.powf(cfg.alpha) * overlap.powf(cfg.beta), overlap)
            })
            .collect();
        // The top k by alignment; stable, so equal metrics keep anchor order.
        c.sort_by(|x, y| y.1.total_cmp(&x.1));
        c.truncate(cfg.topk);
        cands.push(c);
    }
    // An anchor claimed by several boxes keeps the one it overlaps most.
    let mut owner: Vec<Option<(usize, f32, f32)>> = vec![None; a_n];
    for (g, c) in cands.iter().enumerate() {
        for &(a, align, overlap) in c {
            match owner[a] {
                Some((_, _, o)) if o >= overlap => {}
                _ => owner[a] = Some((g, align, overlap)),
            }
        }
    }
    // Soft targets: each box's alignments scaled so its best anchor gets its best IoU.
    let mut best_align = vec![0.0f32; gt.len()];
    let mut best_overlap = vec![0.0f32; gt.len()];
    for &(g, align, overlap) in owner.iter().flatten() {
        best_align[g] = best_align[g].max(align);
        best_overlap[g] = best_overlap[g].max(overlap);
    }
    for (a, o) in owner.iter().enumerate() {
        if let Some((g, align, _)) = *o {
            out.gt[a] = Some(g);
            let norm = align * best_overlap[g] / (best_align[g] + 1e-9);
            out.scores[a * classes + gt[g].1] = norm;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(n: usize, stride: f32) -> Vec<[f32; 2]> {
        (0..n * n)
            .map(|i| {
                [
                    ((i % n) as f32 + 0.5) * stride,
                    ((i / n) as f32 + 0.5) * stride,
                ]
            })
            .collect()
    }

    #[test]
    fn ciou_of_a_box_with_itself_is_one_and_falls_with_distance() {
        let a = [10.0, 10.0, 50.0, 30.0];
        assert!((ciou(&a, &a) - 1.0).abs() < 1e-5);
        let near = ciou(&a, &[12.0, 10.0, 52.0, 30.0]);
        let far = ciou(&a, &[60.0, 10.0, 100.0, 30.0]);
        assert!(near < 1.0 && near > 0.8, "{near}");
        assert!(far < 0.0, "disjoint boxes get a negative CIoU: {far}");
    }

    #[test]
    fn only_anchors_inside_a_box_and_at_most_topk_are_foreground() {
        let points = grid(8, 8.0);
        let a = points.len();
        let gt = [([8.0, 8.0, 40.0, 40.0], 0usize)];
        // Predictions equal to the ground truth everywhere, scores all 0.5.
        let boxes = vec![gt[0].0; a];
        let scores = vec![0.5; a];
        let cfg = AssignerConfig::default();
        let r = assign(&cfg, &scores, &boxes, &points, &gt, 1);
        assert_eq!(r.foreground(), 10);
        for (i, g) in r.gt.iter().enumerate() {
            if g.is_some() {
                let p = points[i];
                assert!(p[0] > 8.0 && p[0] < 40.0 && p[1] > 8.0 && p[1] < 40.0);
                // Perfect boxes: the target is the IoU, 1.
                assert!((r.scores[i] - 1.0).abs() < 1e-4);
            } else {
                assert_eq!(r.scores[i], 0.0);
            }
        }
        let none = assign(&cfg, &scores, &boxes, &points, &[], 1);
        assert_eq!(none.foreground(), 0);
    }

    #[test]
    fn a_contested_anchor_goes_to_the_box_it_overlaps_most() {
        let points = vec![[20.0, 20.0]];
        let pred = [[10.0, 10.0, 30.0, 30.0]];
        let gt = [
            ([0.0, 0.0, 40.0, 40.0], 0usize),
            ([11.0, 11.0, 30.0, 30.0], 1usize),
        ];
        let r = assign(
            &AssignerConfig::default(),
            &[0.5, 0.5],
            &pred,
            &points,
            &gt,
            2,
        );
        assert_eq!(r.gt, vec![Some(1)]);
        assert_eq!(r.scores[0], 0.0);
        assert!(r.scores[1] > 0.8);
    }

    #[test]
    fn a_thin_box_still_gets_anchors() {
        let points = grid(8, 8.0);
        let boxes = vec![[30.0, 10.0, 33.0, 50.0]; points.len()];
        let gt = [([30.0, 10.0, 33.0, 50.0], 0usize)];
        let r = assign(
            &AssignerConfig::default(),
            &vec![0.5; points.len()],
            &boxes,
            &points,
            &gt,
            1,
        );
        assert!(r.foreground() > 0);
    }
}
