//! The study's baseline: a ResNet feature extractor pretrained self-supervised
//! (SimCLR: two augmented views, NT-Xent) to a 32-dimensional embedding, then a small MLP of
//! Linear-ReLU-BatchNorm-Dropout blocks on the frozen embedding.

use super::flex_norm::batch_norm;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// The ResNet backbone and MLP head.
#[derive(Config, Debug)]
pub struct ResnetSslMlpConfig {
    /// Channels of the four stages (ResNet-18: 64, 128, 256, 512).
    #[config(default = "[64, 128, 256, 512]")]
    pub widths: [usize; 4],
    /// Basic blocks per stage (ResNet-18: 2 each).
    #[config(default = "[2, 2, 2, 2]")]
    pub depths: [usize; 4],
    /// Embedding width (the study: 32).
    #[config(default = 32)]
    pub embedding: usize,
    /// MLP hidden width.
    #[config(default = 64)]
    pub mlp_hidden: usize,
    /// MLP blocks (the study's best: 2).
    #[config(default = 2)]
    pub mlp_blocks: usize,
    /// MLP dropout (the study's best: 0.65).
    #[config(default = 0.65)]
    pub mlp_dropout: f64,
    /// Output classes.
    #[config(default = 2)]
    pub num_classes: usize,
}

/// Two 3×3 convolutions with a residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

fn conv(device: &Device, cin: usize, cout: usize, k: usize, stride: usize) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .init(device)
}

impl BasicBlock {
    fn new(device: &Device, cin: usize, cout: usize, stride: usize) -> Self {
        BasicBlock {
            conv1: conv(device, cin, cout, 3, stride),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(device, cout, cout, 3, 1),
            bn2: BatchNormConfig::new(cout).init(device),
            downsample: (stride != 1 || cin != cout).then(|| {
                (
                    conv(device, cin, cout, 1, stride),
                    BatchNormConfig::new(cout).init(device),
                )
            }),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(batch_norm(&self.bn1, self.conv1.forward(x.clone())));
        let y = batch_norm(&self.bn2, self.conv2.forward(y));
        let skip = match &self.downsample {
            Some((c, b)) => batch_norm(b, c.forward(x)),
            None => x,
        };
        relu(y + skip)
    }
}

/// ResNet to a low-dimensional embedding.
#[derive(Module, Debug)]
pub struct ResNetEmbed {
    stem: Conv2d,
    stem_bn: BatchNorm,
    pool: MaxPool2d,
    blocks: Vec<BasicBlock>,
    avg: AdaptiveAvgPool2d,
    embed: Linear,
}

impl ResNetEmbed {
    /// `[batch, 3, h, w]` → `[batch, embedding]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self
            .pool
            .forward(relu(batch_norm(&self.stem_bn, self.stem.forward(x))));
        for b in &self.blocks {
            x = b.forward(x);
        }
        self.embed.forward(self.avg.forward(x).flatten(1, 3))
    }
}

/// SimCLR's projection head, used only by the contrastive loss.
#[derive(Module, Debug)]
pub struct Projection {
    fc1: Linear,
    fc2: Linear,
}

impl Projection {
    /// `[batch, embedding]` → `[batch, embedding]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// One Linear-ReLU-BatchNorm-Dropout block.
#[derive(Module, Debug)]
pub struct MlpBlock {
    linear: Linear,
    bn: BatchNorm,
    dropout: Dropout,
}

/// The classifier on the frozen embedding.
#[derive(Module, Debug)]
pub struct MlpHead {
    blocks: Vec<MlpBlock>,
    out: Linear,
}

impl MlpHead {
    /// `[batch, embedding]` → logits `[batch, classes]`.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for b in &self.blocks {
            x = b.dropout.forward(b.bn.forward(relu(b.linear.forward(x))));
        }
        self.out.forward(x)
    }
}

/// Backbone, projection (pretraining only) and head.
#[derive(Module, Debug)]
pub struct ResnetSslMlp {
    /// The self-supervised backbone.
    pub backbone: ResNetEmbed,
    /// The contrastive projection.
    pub projection: Projection,
    /// The supervised head.
    pub head: MlpHead,
}

impl ResnetSslMlpConfig {
    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> ResnetSslMlp {
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (stage, (&w, &n)) in self.widths.iter().zip(&self.depths).enumerate() {
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(device, cin, w, stride));
                cin = w;
            }
        }
        let e = self.embedding;
        let mut mlp = Vec::new();
        let mut din = e;
        for _ in 0..self.mlp_blocks {
            mlp.push(MlpBlock {
                linear: LinearConfig::new(din, self.mlp_hidden).init(device),
                bn: BatchNormConfig::new(self.mlp_hidden).init(device),
                dropout: DropoutConfig::new(self.mlp_dropout).init(),
            });
            din = self.mlp_hidden;
        }
        ResnetSslMlp {
            backbone: ResNetEmbed {
                stem: conv(device, 3, 64, 7, 2),
                stem_bn: BatchNormConfig::new(64).init(device),
                pool: MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(),
                blocks,
                avg: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
                embed: LinearConfig::new(cin, e).init(device),
            },
            projection: Projection {
                fc1: LinearConfig::new(e, 2 * e).init(device),
                fc2: LinearConfig::new(2 * e, e).init(device),
            },
            head: MlpHead {
                blocks: mlp,
                out: LinearConfig::new(din, self.num_classes).init(device),
            },
        }
    }
}

impl ResnetSslMlp {
    /// Logits: `[batch, 3, h, w]` → `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.forward(images))
    }
}

/// NT-Xent (SimCLR's normalized temperature-scaled cross-entropy) over `z` of shape
/// `[2n, d]`, where rows `i` and `i + n` are two views of one image.
pub fn nt_xent(z: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [m, _] = z.dims();
    let n = m / 2;
    let device = z.device();
    let norm = z.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    let z = z / norm;
    let sim = z.clone().matmul(z.transpose()) / temperature;
    // A view is not its own negative.
    let sim = sim - Tensor::<2>::eye(m, &device) * 1e9;
    let mut target = vec![0.0f32; m * m];
    for i in 0..m {
        target[i * m + (i + n) % m] = 1.0;
    }
    let target = Tensor::<2>::from_data(burn::tensor::TensorData::new(target, [m, m]), &device);
    let logp = burn::tensor::activation::log_softmax(sim, 1);
    -(logp * target).sum() / (m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn nt_xent_rewards_agreeing_views() {
        let device = Device::flex();
        // Two views of each of 3 images: identical in `agree`, mismatched in `disagree`.
        let a = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let rows = |second: [[f32; 3]; 3]| {
            let v: Vec<f32> = a.iter().chain(second.iter()).flatten().copied().collect();
            Tensor::<2>::from_data(TensorData::new(v, [6, 3]), &device)
        };
        let agree = nt_xent(rows(a), 0.5).into_scalar::<f32>();
        let disagree = nt_xent(rows([a[1], a[2], a[0]]), 0.5).into_scalar::<f32>();
        assert!(agree < disagree, "{agree} vs {disagree}");
        // Closed form for the agreeing case: -log(e^2 / (e^2 + 4 e^0)).
        let want = -((2f32).exp() / ((2f32).exp() + 4.0)).ln();
        assert!((agree - want).abs() < 1e-4, "{agree} vs {want}");
    }

    #[test]
    fn shapes() {
        let device = Device::flex();
        let m = ResnetSslMlpConfig::new()
            .with_widths([8, 8, 16, 16])
            .with_depths([1, 1, 1, 1])
            .init(&device);
        let y = m.forward(Tensor::zeros([2, 3, 64, 64], &device));
        assert_eq!(y.dims(), [2, 2]);
    }
}
