//! Runs an ONNX graph with tract, the edge's CPU engine: the exported model is checked and
//! calibrated with the runtime that will serve it.

use anyhow::Context as _;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// An optimized tract plan for one fixed input shape.
pub struct Runner {
    plan: Arc<TypedRunnableModel>,
    shape: Vec<usize>,
}

impl Runner {
    /// Loads `bytes` with the input fixed to `shape` (f32).
    pub fn new(bytes: &[u8], shape: &[usize]) -> anyhow::Result<Self> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .context("tract cannot read the ONNX graph")?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()
            .context("tract cannot optimize the ONNX graph")?
            .into_runnable()?;
        Ok(Runner {
            plan,
            shape: shape.to_vec(),
        })
    }

    /// Every output of the graph for input `x`, flattened, as f32.
    pub fn run(&self, x: Vec<f32>) -> anyhow::Result<Vec<Vec<f32>>> {
        let input = Tensor::from_shape(&self.shape, &x)?;
        let out = self.plan.run(tvec!(input.into()))?;
        out.iter()
            .map(|t| {
                let t = t.cast_to::<f32>()?;
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            })
            .collect()
    }
}
