//! Vision Transformers as published on Hugging Face: ViT-B/16 (`google/vit-base-patch16-224`,
//! Dosovitskiy et al. 2021) and DINOv2 ViT-S/14 and ViT-L/14 (`facebook/dinov2-small`,
//! `-large`, Oquab et al. 2023). One architecture with two flavours: DINOv2 adds layer
//! scale, uses LayerNorm eps 1e-6 and learns on 518-pixel inputs, so its position embeddings
//! are resized (bicubic) to the patch grid actually used.
//!
//! Module paths follow the published safetensors after [`hf_key_remapping`], so weights load
//! by name.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

/// What the classification head reads.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum VitHead {
    /// The CLS token (ViT).
    Cls,
    /// The CLS token concatenated with the mean patch token (DINOv2's linear probe).
    ClsAndMeanPatch,
}

/// A ViT's configuration.
#[derive(Config, Debug)]
pub struct VitConfig {
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Side of the patch grid the position embeddings were learned on.
    pub pos_grid: usize,
    /// Token width.
    pub hidden: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_hidden: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Whether blocks scale their residual branches (DINOv2).
    pub layer_scale: bool,
    /// What the head reads.
    pub head: VitHead,
    /// Output classes.
    #[config(default = 2)]
    pub num_classes: usize,
    /// Dropout before the head.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl VitConfig {
    /// ViT-B/16 at 224 pixels.
    pub fn vit_b16() -> Self {
        VitConfig::new(16, 14, 768, 12, 12, 3072, 1e-12, false, VitHead::Cls)
    }
    /// DINOv2 ViT-S/14.
    pub fn dinov2_small() -> Self {
        VitConfig::new(
            14,
            37,
            384,
            12,
            6,
            1536,
            1e-6,
            true,
            VitHead::ClsAndMeanPatch,
        )
    }
    /// DINOv2 ViT-L/14.
    pub fn dinov2_large() -> Self {
        VitConfig::new(
            14,
            37,
            1024,
            24,
            16,
            4096,
            1e-6,
            true,
            VitHead::ClsAndMeanPatch,
        )
    }
}

/// Key remapping from published Hugging Face safetensors to our module paths.
pub fn hf_key_remapping() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"^vit\.", ""),
        (r"^dinov2\.", ""),
        (r"(layer\.\d+)\.layernorm_before\.", "$1.norm1."),
        (r"(layer\.\d+)\.layernorm_after\.", "$1.norm2."),
        (r"(layer\.\d+)\.intermediate\.dense\.", "$1.mlp.fc1."),
        (r"(layer\.\d+)\.output\.dense\.", "$1.mlp.fc2."),
    ]
}

/// Patch projection.
#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    projection: Conv2d,
}

/// CLS token, position embeddings and patch projection.
#[derive(Module, Debug)]
pub struct Embeddings {
    cls_token: Param<Tensor<3>>,
    position_embeddings: Param<Tensor<3>>,
    patch_embeddings: PatchEmbeddings,
}

/// Query, key and value projections.
#[derive(Module, Debug)]
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

/// The attention output projection.
#[derive(Module, Debug)]
pub struct AttentionOutput {
    dense: Linear,
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    attention: SelfAttention,
    output: AttentionOutput,
    #[module(skip)]
    heads: usize,
}

/// Per-channel scale of a residual branch.
#[derive(Module, Debug)]
pub struct LayerScale {
    lambda1: Param<Tensor<1>>,
}

/// Two-layer GELU MLP.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attention: Attention,
    layer_scale1: Option<LayerScale>,
    norm2: LayerNorm,
    mlp: Mlp,
    layer_scale2: Option<LayerScale>,
}

/// The blocks.
#[derive(Module, Debug)]
pub struct Encoder {
    layer: Vec<Block>,
}

/// A ViT classifier.
#[derive(Module, Debug)]
pub struct Vit {
    embeddings: Embeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    dropout: Dropout,
    classifier: Linear,
    #[module(skip)]
    patch_size: usize,
    #[module(skip)]
    pos_grid: usize,
    #[module(skip)]
    head: VitHead,
}

impl VitConfig {
    /// Builds the model with fresh weights.
    pub fn init(&self, device: &Device) -> Vit {
        let d = self.hidden;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let scale = || {
            self.layer_scale.then(|| LayerScale {
                lambda1: Initializer::Ones.init([d], device),
            })
        };
        let layer = (0..self.layers)
            .map(|_| Block {
                norm1: norm(),
                attention: Attention {
                    attention: SelfAttention {
                        query: lin(d, d),
                        key: lin(d, d),
                        value: lin(d, d),
                    },
                    output: AttentionOutput { dense: lin(d, d) },
                    heads: self.heads,
                },
                layer_scale1: scale(),
                norm2: norm(),
                mlp: Mlp {
                    fc1: lin(d, self.mlp_hidden),
                    fc2: lin(self.mlp_hidden, d),
                },
                layer_scale2: scale(),
            })
            .collect();
        let head_in = match self.head {
            VitHead::Cls => d,
            VitHead::ClsAndMeanPatch => 2 * d,
        };
        Vit {
            embeddings: Embeddings {
                cls_token: Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([1, 1, d], device),
                position_embeddings: Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                }
                .init([1, 1 + self.pos_grid * self.pos_grid, d], device),
                patch_embeddings: PatchEmbeddings {
                    projection: Conv2dConfig::new([3, d], [self.patch_size, self.patch_size])
                        .with_stride([self.patch_size, self.patch_size])
                        .init(device),
                },
            },
            encoder: Encoder { layer },
            layernorm: norm(),
            dropout: DropoutConfig::new(self.dropout).init(),
            classifier: lin(head_in, self.num_classes),
            patch_size: self.patch_size,
            pos_grid: self.pos_grid,
            head: self.head,
        }
    }
}

impl Attention {
    /// `[batch, tokens, d]` → `[batch, tokens, d]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let split = |t: Tensor<3>| t.reshape([b, n, h, dh]).swap_dims(1, 2);
        let q = split(self.attention.query.forward(x.clone()));
        let k = split(self.attention.key.forward(x.clone()));
        let v = split(self.attention.value.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
        let ctx = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, n, d]);
        self.output.dense.forward(ctx)
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let scaled = |s: &Option<LayerScale>, t: Tensor<3>| match s {
            Some(s) => t * s.lambda1.val().unsqueeze::<3>(),
            None => t,
        };
        let a = self.attention.forward(self.norm1.forward(x.clone()));
        let x = x + scaled(&self.layer_scale1, a);
        let m = self
            .mlp
            .fc2
            .forward(gelu(self.mlp.fc1.forward(self.norm2.forward(x.clone()))));
        x + scaled(&self.layer_scale2, m)
    }
}

impl Vit {
    /// Position embeddings for a `gh`×`gw` grid: as learned, or resized bicubically.
    fn positions(&self, gh: usize, gw: usize) -> Tensor<3> {
        let pos = self.embeddings.position_embeddings.val();
        if gh == self.pos_grid && gw == self.pos_grid {
            return pos;
        }
        let [_, n, d] = pos.dims();
        let cls = pos.clone().slice([0..1, 0..1, 0..d]);
        let g = self.pos_grid;
        let grid = pos
            .slice([0..1, 1..n, 0..d])
            .reshape([1, g, g, d])
            .permute([0, 3, 1, 2]);
        let mut opts = InterpolateOptions::new(InterpolateMode::Bicubic);
        opts.align_corners = false;
        opts.output_size = Some([gh, gw]);
        let resized = interpolate(grid, opts)
            .permute([0, 2, 3, 1])
            .reshape([1, gh * gw, d]);
        Tensor::cat(vec![cls, resized], 1)
    }

    /// Final-normed tokens: `[batch, 3, h, w]` → `[batch, 1 + patches, d]`.
    pub fn tokens(&self, images: Tensor<4>) -> Tensor<3> {
        let p = self.embeddings.patch_embeddings.projection.forward(images);
        let [b, d, gh, gw] = p.dims();
        let patches = p.flatten::<3>(2, 3).swap_dims(1, 2);
        let cls = self.embeddings.cls_token.val().expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, patches], 1) + self.positions(gh, gw);
        for block in &self.encoder.layer {
            x = block.forward(x);
        }
        self.layernorm.forward(x)
    }

    /// The head's input: `[batch, d]` (CLS) or `[batch, 2d]` (CLS and mean patch).
    pub fn pooled(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.tokens(images);
        let [b, n, d] = x.dims();
        let cls = x.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        match self.head {
            VitHead::Cls => cls,
            VitHead::ClsAndMeanPatch => {
                let mean = x.slice([0..b, 1..n, 0..d]).mean_dim(1).reshape([b, d]);
                Tensor::cat(vec![cls, mean], 1)
            }
        }
    }

    /// Logits: `[batch, 3, h, w]` → `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.classifier
            .forward(self.dropout.forward(self.pooled(images)))
    }
}
