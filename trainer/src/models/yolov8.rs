//! YOLOv8 (Ultralytics, 2023): the CSP backbone of C2f blocks with SPPF, the PAN neck and the
//! decoupled, anchor-free head whose box branch predicts each side's distance as a
//! distribution over `reg_max` bins (DFL).
//!
//! Parameter names follow Ultralytics' `model.N.*` layout with the layer index kept
//! (`model.4.m.0.cv1.conv.weight` is our `m4.m.0.cv1.conv.weight`), so converted checkpoints
//! load through [`ultralytics_key_remapping`] with no table per tensor.
//!
//! `yolov8-effl0` and `yolov8-effl2` swap the CSP backbone for EfficientNet-Lite0's or -Lite2's
//! stem and blocks (ImageNet weights that ship here) and keep YOLOv8n's SPPF, neck and head.

use super::efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig, LiteVariant};
use super::flex_act::silu;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The strides of the three detection levels (P3, P4, P5).
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Which backbone feeds the neck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum YoloBackbone {
    /// YOLOv8's own CSP backbone (C2f blocks and SPPF).
    Csp,
    /// An EfficientNet-Lite's stem and MBConv blocks, tapped at the ends of its stages at
    /// strides 8, 16 and 32 (Lite0: blocks 4, 10, 15; Lite2: 6, 14, 20).
    EfficientNetLite(LiteVariant),
}

/// A YOLOv8 configuration: Ultralytics' compound scaling (depth, width, channel cap).
#[derive(Config, Debug)]
pub struct YoloV8Config {
    /// Depth multiple (`n`, `s`: 0.33).
    pub depth: f64,
    /// Width multiple (`n`: 0.25, `s`: 0.5).
    pub width: f64,
    /// Channel cap before the width multiple (`n`, `s`: 1024).
    #[config(default = 1024)]
    pub max_channels: usize,
    /// Classes.
    #[config(default = 1)]
    pub num_classes: usize,
    /// DFL bins per box side.
    #[config(default = 16)]
    pub reg_max: usize,
    /// The backbone.
    #[config(default = "YoloBackbone::Csp")]
    pub backbone: YoloBackbone,
}

impl YoloV8Config {
    /// YOLOv8n.
    pub fn n() -> Self {
        YoloV8Config::new(0.33, 0.25)
    }

    /// YOLOv8s.
    pub fn s() -> Self {
        YoloV8Config::new(0.33, 0.5)
    }

    /// YOLOv8n's neck and head on EfficientNet-Lite0.
    pub fn effl0() -> Self {
        YoloV8Config::n().with_backbone(YoloBackbone::EfficientNetLite(LiteVariant::Lite0))
    }

    /// YOLOv8n's neck and head on EfficientNet-Lite2.
    pub fn effl2() -> Self {
        YoloV8Config::n().with_backbone(YoloBackbone::EfficientNetLite(LiteVariant::Lite2))
    }

    /// Ultralytics' `make_divisible(min(c, max_channels) * width, 8)`.
    fn ch(&self, c: usize) -> usize {
        let c = c.min(self.max_channels) as f64 * self.width;
        ((c / 8.0).ceil() as usize * 8).max(8)
    }

    /// Ultralytics' `max(round(n * depth), 1)`.
    fn reps(&self, n: usize) -> usize {
        ((n as f64 * self.depth).round() as usize).max(1)
    }

    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> YoloV8 {
        let (c3, c4, c5) = (self.ch(256), self.ch(512), self.ch(1024));
        let (csp, effnet, taps) = match self.backbone {
            YoloBackbone::Csp => (Some(CspBackbone::new(self, device)), None, [c3, c4, c5]),
            YoloBackbone::EfficientNetLite(variant) => (
                None,
                Some(
                    EfficientNetLiteConfig::new()
                        .with_variant(variant)
                        .init(device),
                ),
                variant.pyramid().1,
            ),
        };
        // The EfficientNet taps get YOLOv8's SPPF on P5, as the CSP backbone has.
        let m9_eff = effnet
            .as_ref()
            .map(|_| Sppf::new(device, taps[2], c5, true));
        let n = self.reps(3);
        YoloV8 {
            csp,
            effnet,
            m9: m9_eff,
            m12: C2f::new(device, c5 + taps[1], c4, n, false),
            m15: C2f::new(device, c4 + taps[0], c3, n, false),
            m16: ConvBnAct::new(device, c3, c3, 3, 2),
            m18: C2f::new(device, c3 + c4, c4, n, false),
            m19: ConvBnAct::new(device, c4, c4, 3, 2),
            m21: C2f::new(device, c4 + c5, c5, n, false),
            m22: Detect::new(device, [c3, c4, c5], self.num_classes, self.reg_max),
            num_classes: self.num_classes,
            reg_max: self.reg_max,
        }
    }
}

/// How Ultralytics' tensor names map to ours: `model.N.` → `mN.` (the CSP backbone's layers
/// under `csp.`), and the head's `nn.Sequential` indices to field names.
pub fn ultralytics_key_remapping() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"^model\.([0-9])\.", "csp.m$1."),
        (r"^model\.(1[0-9]|2[0-9])\.", "m$1."),
        (r"^m22\.(cv[23])\.([0-9])\.0\.", "m22.$1.$2.a."),
        (r"^m22\.(cv[23])\.([0-9])\.1\.", "m22.$1.$2.b."),
        (r"^m22\.(cv[23])\.([0-9])\.2\.", "m22.$1.$2.out."),
    ]
}

/// Conv (no bias) → BatchNorm → SiLU, with "same" padding for odd kernels: Ultralytics' `Conv`.
#[derive(Module, Debug)]
pub struct ConvBnAct {
    conv: Conv2d,
    bn: BatchNorm,
    #[module(skip)]
    act: bool,
}

impl ConvBnAct {
    fn new(device: &Device, cin: usize, cout: usize, kernel: usize, stride: usize) -> Self {
        ConvBnAct {
            conv: Conv2dConfig::new([cin, cout], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                    kernel / 2,
                ))
                .with_bias(false)
                .init(device),
            // PyTorch's BatchNorm2d as Ultralytics sets it: eps 1e-3, momentum 0.03.
            bn: BatchNormConfig::new(cout)
                .with_epsilon(1e-3)
                .with_momentum(0.03)
                .init(device),
            act: true,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = super::flex_norm::batch_norm(&self.bn, self.conv.forward(x));
        if self.act {
            silu(y)
        } else {
            y
        }
    }
}

/// Two 3×3 convs with a residual connection when asked and the shape allows.
#[derive(Module, Debug)]
pub struct Bottleneck {
    cv1: ConvBnAct,
    cv2: ConvBnAct,
    #[module(skip)]
    add: bool,
}

impl Bottleneck {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.cv2.forward(self.cv1.forward(x.clone()));
        if self.add {
            x + y
        } else {
            y
        }
    }
}

/// CSP bottleneck with two convs: split, `n` bottlenecks on the second half, concatenate
/// every intermediate, fuse with a 1×1 conv.
#[derive(Module, Debug)]
pub struct C2f {
    cv1: ConvBnAct,
    cv2: ConvBnAct,
    m: Vec<Bottleneck>,
}

impl C2f {
    fn new(device: &Device, cin: usize, cout: usize, n: usize, shortcut: bool) -> Self {
        let c = cout / 2;
        C2f {
            cv1: ConvBnAct::new(device, cin, 2 * c, 1, 1),
            cv2: ConvBnAct::new(device, (2 + n) * c, cout, 1, 1),
            m: (0..n)
                .map(|_| Bottleneck {
                    cv1: ConvBnAct::new(device, c, c, 3, 1),
                    cv2: ConvBnAct::new(device, c, c, 3, 1),
                    add: shortcut,
                })
                .collect(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut ys = self.cv1.forward(x).chunk(2, 1);
        for b in &self.m {
            let last = ys.last().expect("chunk gives two").clone();
            ys.push(b.forward(last));
        }
        self.cv2.forward(Tensor::cat(ys, 1))
    }
}

/// Spatial pyramid pooling, fast: three chained 5×5 max pools, concatenated.
#[derive(Module, Debug)]
pub struct Sppf {
    cv1: ConvBnAct,
    cv2: ConvBnAct,
    pool: MaxPool2d,
}

impl Sppf {
    /// `cv1_act`: YOLOv8's SPPF has SiLU after its first conv (Ultralytics ≥ 8.4 builds
    /// YOLO26's without one, but keeps it for YOLOv8 YAML rows and checkpoints).
    fn new(device: &Device, cin: usize, cout: usize, cv1_act: bool) -> Self {
        let hidden = cin / 2;
        let mut cv1 = ConvBnAct::new(device, cin, hidden, 1, 1);
        cv1.act = cv1_act;
        Sppf {
            cv1,
            cv2: ConvBnAct::new(device, hidden * 4, cout, 1, 1),
            pool: MaxPool2dConfig::new([5, 5])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let a = self.cv1.forward(x);
        let b = self.pool.forward(a.clone());
        let c = self.pool.forward(b.clone());
        let d = self.pool.forward(c.clone());
        self.cv2.forward(Tensor::cat(vec![a, b, c, d], 1))
    }
}

/// YOLOv8's backbone, layers 0–9.
#[derive(Module, Debug)]
pub struct CspBackbone {
    m0: ConvBnAct,
    m1: ConvBnAct,
    m2: C2f,
    m3: ConvBnAct,
    m4: C2f,
    m5: ConvBnAct,
    m6: C2f,
    m7: ConvBnAct,
    m8: C2f,
    m9: Sppf,
}

impl CspBackbone {
    fn new(c: &YoloV8Config, device: &Device) -> Self {
        let ch = |x| c.ch(x);
        CspBackbone {
            m0: ConvBnAct::new(device, 3, ch(64), 3, 2),
            m1: ConvBnAct::new(device, ch(64), ch(128), 3, 2),
            m2: C2f::new(device, ch(128), ch(128), c.reps(3), true),
            m3: ConvBnAct::new(device, ch(128), ch(256), 3, 2),
            m4: C2f::new(device, ch(256), ch(256), c.reps(6), true),
            m5: ConvBnAct::new(device, ch(256), ch(512), 3, 2),
            m6: C2f::new(device, ch(512), ch(512), c.reps(6), true),
            m7: ConvBnAct::new(device, ch(512), ch(1024), 3, 2),
            m8: C2f::new(device, ch(1024), ch(1024), c.reps(3), true),
            m9: Sppf::new(device, ch(1024), ch(1024), true),
        }
    }

    /// P3, P4 and P5 (after SPPF).
    fn forward(&self, x: Tensor<4>) -> [Tensor<4>; 3] {
        let x = self.m2.forward(self.m1.forward(self.m0.forward(x)));
        let p3 = self.m4.forward(self.m3.forward(x));
        let p4 = self.m6.forward(self.m5.forward(p3.clone()));
        let p5 = self
            .m9
            .forward(self.m8.forward(self.m7.forward(p4.clone())));
        [p3, p4, p5]
    }
}

/// One branch of the head at one level: two 3×3 convs, then a 1×1 conv with bias.
#[derive(Module, Debug)]
pub struct HeadBranch {
    a: ConvBnAct,
    b: ConvBnAct,
    out: Conv2d,
}

impl HeadBranch {
    fn new(device: &Device, cin: usize, mid: usize, cout: usize) -> Self {
        HeadBranch {
            a: ConvBnAct::new(device, cin, mid, 3, 1),
            b: ConvBnAct::new(device, mid, mid, 3, 1),
            out: Conv2dConfig::new([mid, cout], [1, 1]).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.out.forward(self.b.forward(self.a.forward(x)))
    }
}

/// The decoupled head: per level a box branch (`cv2`, 4 × `reg_max` distribution logits) and
/// a class branch (`cv3`, one logit per class).
#[derive(Module, Debug)]
pub struct Detect {
    cv2: Vec<HeadBranch>,
    cv3: Vec<HeadBranch>,
}

impl Detect {
    fn new(device: &Device, ch: [usize; 3], nc: usize, reg_max: usize) -> Self {
        let c2 = 16.max(ch[0] / 4).max(reg_max * 4);
        let c3 = ch[0].max(nc.min(100));
        let mut head = Detect {
            cv2: ch
                .iter()
                .map(|&c| HeadBranch::new(device, c, c2, 4 * reg_max))
                .collect(),
            cv3: ch
                .iter()
                .map(|&c| HeadBranch::new(device, c, c3, nc))
                .collect(),
        };
        head.bias_init(nc, device);
        head
    }

    /// Ultralytics' `bias_init`: box logits start at 2 and class logits at the prior of
    /// 5 objects per 640-pixel image, so early training is not swamped by the background.
    fn bias_init(&mut self, nc: usize, device: &Device) {
        for (i, (b, c)) in self.cv2.iter_mut().zip(self.cv3.iter_mut()).enumerate() {
            let set = |conv: &mut Conv2d, value: f32| {
                if let Some(bias) = conv.bias.take() {
                    let n = bias.dims()[0];
                    conv.bias = Some(bias.map(|_| Tensor::full([n], value, device)));
                }
            };
            set(&mut b.out, 2.0);
            let cells = (640.0 / STRIDES[i] as f64).powi(2);
            set(&mut c.out, (5.0 / nc as f64 / cells).ln() as f32);
        }
    }
}

/// Raw head output: box distribution logits `[batch, 4 × reg_max, anchors]` and class logits
/// `[batch, classes, anchors]`, anchors ordered P3, P4, P5, each row-major.
#[derive(Clone, Debug)]
pub struct RawPrediction {
    /// Box distribution logits.
    pub boxes: Tensor<3>,
    /// Class logits.
    pub scores: Tensor<3>,
    /// `(height, width)` of each level's grid.
    pub grids: [(usize, usize); 3],
}

/// YOLOv8 for detection.
#[derive(Module, Debug)]
pub struct YoloV8 {
    csp: Option<CspBackbone>,
    effnet: Option<EfficientNetLite>,
    m9: Option<Sppf>,
    m12: C2f,
    m15: C2f,
    m16: ConvBnAct,
    m18: C2f,
    m19: ConvBnAct,
    m21: C2f,
    m22: Detect,
    #[module(skip)]
    num_classes: usize,
    #[module(skip)]
    reg_max: usize,
}

fn upsample2(x: Tensor<4>) -> Tensor<4> {
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest).with_scale_factor([2.0, 2.0]),
    )
}

impl YoloV8 {
    /// Classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// DFL bins per side.
    pub fn reg_max(&self) -> usize {
        self.reg_max
    }

    /// The raw head output for `[batch, 3, h, w]` images (`h`, `w` multiples of 32).
    pub fn forward(&self, images: Tensor<4>) -> RawPrediction {
        let [p3, p4, p5] = match (&self.csp, &self.effnet, &self.m9) {
            (Some(csp), _, _) => csp.forward(images),
            (None, Some(eff), Some(sppf)) => {
                let [p3, p4, p5] = eff.detector_pyramid(images);
                [p3, p4, sppf.forward(p5)]
            }
            _ => unreachable!("YoloV8Config::init builds one backbone"),
        };
        let h12 = self
            .m12
            .forward(Tensor::cat(vec![upsample2(p5.clone()), p4], 1));
        let h15 = self
            .m15
            .forward(Tensor::cat(vec![upsample2(h12.clone()), p3], 1));
        let h18 = self
            .m18
            .forward(Tensor::cat(vec![self.m16.forward(h15.clone()), h12], 1));
        let h21 = self
            .m21
            .forward(Tensor::cat(vec![self.m19.forward(h18.clone()), p5], 1));
        let levels = [h15, h18, h21];
        let mut grids = [(0, 0); 3];
        let (mut boxes, mut scores) = (Vec::new(), Vec::new());
        for (i, x) in levels.into_iter().enumerate() {
            let [b, _, h, w] = x.dims();
            grids[i] = (h, w);
            boxes.push(
                self.m22.cv2[i]
                    .forward(x.clone())
                    .reshape([b, 4 * self.reg_max, h * w]),
            );
            scores.push(
                self.m22.cv3[i]
                    .forward(x)
                    .reshape([b, self.num_classes, h * w]),
            );
        }
        RawPrediction {
            boxes: Tensor::cat(boxes, 2),
            scores: Tensor::cat(scores, 2),
            grids,
        }
    }
}

/// Anchor centres `(x, y)` in grid units and each anchor's stride, for `grids`.
pub fn anchors(grids: &[(usize, usize); 3]) -> (Vec<[f32; 2]>, Vec<f32>) {
    let mut points = Vec::new();
    let mut strides = Vec::new();
    for (&(h, w), &s) in grids.iter().zip(&STRIDES) {
        for y in 0..h {
            for x in 0..w {
                points.push([x as f32 + 0.5, y as f32 + 0.5]);
                strides.push(s as f32);
            }
        }
    }
    (points, strides)
}

/// The expected distance per side: softmax over the `reg_max` bins, times the bin index.
/// `[batch, 4 × reg_max, anchors]` → `[batch, 4, anchors]`.
pub fn dfl_expectation(boxes: Tensor<3>, reg_max: usize) -> Tensor<3> {
    let [b, _, a] = boxes.dims();
    let device = boxes.device();
    let bins = Tensor::<1>::from_data(
        TensorData::new((0..reg_max).map(|i| i as f32).collect(), [reg_max]),
        &device,
    )
    .reshape([1, 1, 1, reg_max]);
    // Bins last for burn's softmax; the ONNX export writes its own (detect/export.rs).
    let p = softmax(boxes.reshape([b, 4, reg_max, a]).swap_dims(2, 3), 3);
    (p * bins).sum_dim(3).reshape([b, 4, a])
}

/// Boxes from per-side distances `[batch, 4, anchors]` (left, top, right, bottom) around the
/// anchor `points`, in the same units: `[x1, y1, x2, y2]`, each `[batch, 1, anchors]`.
pub fn dist_to_xyxy(dist: &Tensor<3>, points: &[[f32; 2]]) -> [Tensor<3>; 4] {
    let device = dist.device();
    let a = points.len();
    let coord = |k: usize| {
        Tensor::<1>::from_data(
            TensorData::new(points.iter().map(|p| p[k]).collect::<Vec<_>>(), [a]),
            &device,
        )
        .reshape([1, 1, a])
    };
    let (ax, ay) = (coord(0), coord(1));
    let side = |k: usize| dist.clone().narrow(1, k, 1);
    [
        ax.clone() - side(0),
        ay.clone() - side(1),
        ax + side(2),
        ay + side(3),
    ]
}

/// Decodes a raw prediction as Ultralytics' inference output: `[batch, 4 + classes,
/// anchors]`, boxes as centre x, centre y, width, height in input pixels, then one sigmoid
/// score per class.
pub fn decode(raw: &RawPrediction, reg_max: usize) -> Tensor<3> {
    let device = raw.boxes.device();
    let dist = dfl_expectation(raw.boxes.clone(), reg_max);
    let [_, _, a] = dist.dims();
    let (points, strides) = anchors(&raw.grids);
    let stride = Tensor::<1>::from_data(TensorData::new(strides, [a]), &device).reshape([1, 1, a]);
    let [x1, y1, x2, y2] = dist_to_xyxy(&dist, &points);
    let cx = (x1.clone() + x2.clone()) / 2.0;
    let cy = (y1.clone() + y2.clone()) / 2.0;
    let boxes = Tensor::cat(vec![cx, cy, x2 - x1, y2 - y1], 1) * stride;
    Tensor::cat(vec![boxes, sigmoid(raw.scores.clone())], 1)
}
