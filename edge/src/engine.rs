//! Inference engines behind one trait. tract (pure Rust, CPU) is always built and is the
//! default; TensorRT on the Jetson comes behind a cargo feature.

use anyhow::Context as _;
use fv_core::preprocess::InputTensor;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Runs one model on one input tensor.
pub trait Engine: Send {
    /// Engine name for logs and results (`tract`).
    fn name(&self) -> &'static str;
    /// Every output of the graph, flattened, as f32.
    fn run(&mut self, input: &InputTensor) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// tract: loads the ONNX file, fixes the input shape, optimizes once.
pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
}

impl TractEngine {
    /// Loads `path` with the input shape `shape` (NCHW, batch 1).
    pub fn load(path: &Path, shape: [usize; 4]) -> anyhow::Result<Self> {
        let plan = tract_onnx::onnx()
            .model_for_path(path)
            .with_context(|| format!("{}: tract cannot read this ONNX file", path.display()))?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()
            .with_context(|| format!("{}: tract cannot optimize this graph", path.display()))?
            .into_runnable()?;
        Ok(TractEngine { plan })
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &InputTensor) -> anyhow::Result<Vec<Vec<f32>>> {
        let x = Tensor::from_shape(&input.shape, &input.data)?;
        let out = self.plan.run(tvec!(x.into()))?;
        out.iter()
            .map(|t| {
                let t = t.cast_to::<f32>()?;
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            })
            .collect()
    }
}
