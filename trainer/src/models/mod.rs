//! Model architectures, one file each, and the table that maps `--model` names to them.

pub mod efficientnet_lite;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig};
use serde::{Deserialize, Serialize};

/// The classifiers `fv-train classify --model` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// EfficientNet-Lite0, ImageNet-pretrained: the edge model we train here.
    EfficientnetLite0,
}

impl ModelKind {
    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::EfficientnetLite0 => "efficientnet-lite0",
        }
    }

    /// The pretrained weights that ship with the repository, if any: relative to the
    /// working directory (the repository root), else where this binary was built from.
    pub fn default_weights(self) -> Option<std::path::PathBuf> {
        let rel = match self {
            ModelKind::EfficientnetLite0 => "models/pretrained/efficientnet-lite0-imagenet.safetensors",
        };
        let here = std::path::PathBuf::from(rel);
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        Some(if !here.exists() && built.exists() { built } else { here })
    }

    /// Parameter paths that pretrained weights do not provide (the new head).
    pub fn fresh_head(self) -> &'static [&'static str] {
        match self {
            ModelKind::EfficientnetLite0 => &["fc."],
        }
    }

    /// ImageNet normalization for every pretrained backbone here.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    }
}

/// A classifier of any architecture: `[batch, 3, h, w]` → logits `[batch, 2]`.
#[derive(Module, Debug)]
pub enum Classifier {
    /// EfficientNet-Lite0.
    EfficientNetLite0(EfficientNetLite),
}

impl Classifier {
    /// A fresh model of `kind` with `num_classes` outputs.
    pub fn new(kind: ModelKind, num_classes: usize, device: &Device) -> Self {
        match kind {
            ModelKind::EfficientnetLite0 => Classifier::EfficientNetLite0(
                EfficientNetLiteConfig::new()
                    .with_num_classes(num_classes)
                    .init(device),
            ),
        }
    }

    /// Logits: `[batch, 3, h, w]` → `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::EfficientNetLite0(m) => m.forward(images),
        }
    }
}
