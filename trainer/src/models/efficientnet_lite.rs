//! EfficientNet-Lite0 and -Lite2 (Tan & Le 2019; the "Lite" variants for edge accelerators:
//! ReLU6, no squeeze-and-excitation, stem and head not scaled), with TensorFlow's "SAME"
//! padding so that the published ImageNet weights reproduce their reference outputs.
//!
//! Parameter names follow the reference PyTorch implementation (`efficientnet-lite-pytorch`)
//! with the leading underscores dropped, so converted weights load without a mapping table.

use super::flex_act::relu6;
use super::flex_norm::batch_norm;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};

/// One stage of MBConv blocks: (repeats, kernel, stride, expand ratio, input, output).
type Stage = (usize, usize, usize, usize, usize, usize);

/// Lite0's stages (width and depth 1.0).
const LITE0: [Stage; 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Lite2's (width 1.1, depth 1.2; the first and last stages' repeats are not scaled), as
/// the published weights hold them: 21 blocks.
const LITE2: [Stage; 7] = [
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 48),
    (4, 3, 2, 6, 48, 88),
    (4, 5, 1, 6, 88, 120),
    (5, 5, 2, 6, 120, 208),
    (1, 3, 1, 6, 208, 352),
];

/// Which EfficientNet-Lite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LiteVariant {
    /// 4.7 M parameters (with the ImageNet head), 224 px in the paper.
    #[default]
    Lite0,
    /// 6.1 M parameters, 260 px in the paper.
    Lite2,
}

impl LiteVariant {
    fn stages(self) -> &'static [Stage; 7] {
        match self {
            LiteVariant::Lite0 => &LITE0,
            LiteVariant::Lite2 => &LITE2,
        }
    }

    /// The last block of the stages at strides 8, 16 and 32 (the third, fifth and seventh),
    /// and their widths: the pyramid a detector's neck reads (Lite0: blocks 4, 10, 15 at 40,
    /// 112, 320 channels).
    pub fn pyramid(self) -> ([usize; 3], [usize; 3]) {
        let stages = self.stages();
        let last_block = |stage: usize| stages[..=stage].iter().map(|s| s.0).sum::<usize>() - 1;
        ([2, 4, 6].map(last_block), [2, 4, 6].map(|i| stages[i].5))
    }
}

/// EfficientNet-Lite's configuration.
#[derive(Config, Debug)]
pub struct EfficientNetLiteConfig {
    /// Lite0 or Lite2.
    #[config(default = "LiteVariant::Lite0")]
    pub variant: LiteVariant,
    /// Output classes.
    #[config(default = 2)]
    pub num_classes: usize,
    /// Dropout before the classifier (the reference uses 0.2).
    #[config(default = 0.2)]
    pub dropout: f64,
    /// A 1×1 convolution on the last feature map giving one fracture logit per cell, trained
    /// on the images' boxes (box supervision) and not exported.
    #[config(default = false)]
    pub cell_head: bool,
}

fn conv_bn(
    device: &Device,
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    groups: usize,
) -> (Conv2d, BatchNorm) {
    let conv = Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .init(device);
    // TensorFlow's epsilon (1e-3) and momentum (0.99, i.e. 0.01 for the new value).
    let bn = BatchNormConfig::new(channels[1])
        .with_epsilon(1e-3)
        .with_momentum(0.01)
        .init(device);
    (conv, bn)
}

/// Mobile inverted bottleneck: expand (1×1), depthwise (k×k), project (1×1), with a
/// residual connection when the shape is kept.
#[derive(Module, Debug)]
pub struct MbConv {
    expand_conv: Option<Conv2d>,
    bn0: Option<BatchNorm>,
    depthwise_conv: Conv2d,
    bn1: BatchNorm,
    project_conv: Conv2d,
    bn2: BatchNorm,
    #[module(skip)]
    residual: bool,
}

impl MbConv {
    fn new(
        device: &Device,
        kernel: usize,
        stride: usize,
        expand: usize,
        cin: usize,
        cout: usize,
    ) -> Self {
        let mid = cin * expand;
        let (expand_conv, bn0) = if expand != 1 {
            let (c, b) = conv_bn(device, [cin, mid], 1, 1, 1);
            (Some(c), Some(b))
        } else {
            (None, None)
        };
        let (depthwise_conv, bn1) = conv_bn(device, [mid, mid], kernel, stride, mid);
        let (project_conv, bn2) = conv_bn(device, [mid, cout], 1, 1, 1);
        MbConv {
            expand_conv,
            bn0,
            depthwise_conv,
            bn1,
            project_conv,
            bn2,
            residual: stride == 1 && cin == cout,
        }
    }

    /// `[batch, cin, h, w]` → `[batch, cout, h / stride, w / stride]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input.clone();
        if let (Some(conv), Some(bn)) = (&self.expand_conv, &self.bn0) {
            x = relu6(batch_norm(bn, super::flex_conv::pointwise(conv, x)));
        }
        x = relu6(batch_norm(
            &self.bn1,
            super::flex_conv::depthwise(&self.depthwise_conv, x),
        ));
        x = batch_norm(
            &self.bn2,
            super::flex_conv::pointwise(&self.project_conv, x),
        );
        if self.residual {
            x = x + input;
        }
        x
    }
}

/// EfficientNet-Lite with a classification head.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    conv_stem: Conv2d,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    conv_head: Conv2d,
    bn1: BatchNorm,
    avg_pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc: Linear,
    cells: Option<Conv2d>,
    #[module(skip)]
    variant: LiteVariant,
}

impl EfficientNetLiteConfig {
    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> EfficientNetLite {
        let (conv_stem, bn0) = conv_bn(device, [3, 32], 3, 2, 1);
        let mut blocks = Vec::new();
        let stages = self.variant.stages();
        for &(repeats, kernel, stride, expand, cin, cout) in stages {
            for r in 0..repeats {
                let (s, i) = if r == 0 { (stride, cin) } else { (1, cout) };
                blocks.push(MbConv::new(device, kernel, s, expand, i, cout));
            }
        }
        let (conv_head, bn1) = conv_bn(device, [stages[6].5, 1280], 1, 1, 1);
        EfficientNetLite {
            conv_stem,
            bn0,
            blocks,
            conv_head,
            bn1,
            avg_pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc: LinearConfig::new(1280, self.num_classes).init(device),
            cells: self
                .cell_head
                .then(|| Conv2dConfig::new([1280, 1], [1, 1]).init(device)),
            variant: self.variant,
        }
    }
}

impl EfficientNetLite {
    /// The last feature map: `[batch, 3, h, w]` → `[batch, 1280, h / 32, w / 32]`.
    fn head_map(&self, images: Tensor<4>) -> Tensor<4> {
        let mut x = relu6(batch_norm(&self.bn0, self.conv_stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        relu6(batch_norm(
            &self.bn1,
            super::flex_conv::pointwise(&self.conv_head, x),
        ))
    }

    /// Pooled features: `[batch, 3, h, w]` → `[batch, 1280]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.avg_pool.forward(self.head_map(images)).flatten(1, 3)
    }

    /// Logits and, with the cell head, one fracture logit per cell of the last feature map
    /// (`[batch, 1, h / 32, w / 32]`), from one pass.
    pub fn forward_with_cells(&self, images: Tensor<4>) -> (Tensor<2>, Option<Tensor<4>>) {
        let map = self.head_map(images);
        let cells = self
            .cells
            .as_ref()
            .map(|c| super::flex_conv::pointwise(c, map.clone()));
        let pooled = self.avg_pool.forward(map).flatten(1, 3);
        (self.fc.forward(self.dropout.forward(pooled)), cells)
    }

    /// Feature maps after the blocks at `taps` (indices into the MBConv blocks, rising):
    /// the pyramid a detector's neck reads. The head conv and classifier are not run.
    pub fn pyramid<const N: usize>(&self, images: Tensor<4>, taps: [usize; N]) -> [Tensor<4>; N] {
        let mut x = relu6(batch_norm(&self.bn0, self.conv_stem.forward(images)));
        let mut out: Vec<Tensor<4>> = Vec::with_capacity(N);
        for (i, block) in self.blocks.iter().enumerate().take(taps[N - 1] + 1) {
            x = block.forward(x);
            if taps.contains(&i) {
                out.push(x.clone());
            }
        }
        out.try_into()
            .unwrap_or_else(|_| panic!("taps {taps:?} must rise and lie within the blocks"))
    }

    /// The feature maps at strides 8, 16 and 32 ([`LiteVariant::pyramid`]'s blocks).
    pub fn detector_pyramid(&self, images: Tensor<4>) -> [Tensor<4>; 3] {
        self.pyramid(images, self.variant.pyramid().0)
    }

    /// Logits: `[batch, 3, h, w]` → `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.fc.forward(self.dropout.forward(self.features(images)))
    }
}
