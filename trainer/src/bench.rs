//! `fv-train bench-step`: images per second of one classifier training step (forward,
//! cross-entropy, backward, AdamW), timed as the training loop runs it. Its PyTorch twin is
//! `trainer/scripts/bench_torch_step.py`; BENCHMARKS.md sets them side by side.

use crate::classify::train::{class_weights, weighted_ce};
use crate::models::{Classifier, ModelKind};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;
use std::time::Instant;

/// One benchmark's result (the same fields as the PyTorch script prints).
#[derive(Clone, Debug, Serialize)]
pub struct StepBench {
    /// Framework and backend.
    pub framework: String,
    /// Architecture.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Input side.
    pub image_size: usize,
    /// CPU threads (rayon's pool; the GPU backend uses it for host work only).
    pub threads: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median step time.
    pub median_step_ms: f64,
    /// `batch / median step time`.
    pub images_per_second: f64,
}

/// Times `steps` training steps after `warmup` untimed ones, on random data.
pub fn bench_step(
    kind: ModelKind,
    batch: usize,
    image_size: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
    backend: &str,
) -> StepBench {
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Classifier::new(kind, 2, &ad);
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let labels: Vec<bool> = (0..batch).map(|i| i % 2 == 0).collect();
    let w = class_weights(labels.iter().copied(), false);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let x = Tensor::<4>::random(
            [batch, 3, image_size, image_size],
            Distribution::Normal(0.0, 1.0),
            &ad,
        );
        let t = Instant::now();
        let loss = weighted_ce(model.forward(x), &labels, w);
        // Reading the loss waits for the device, as the training loop does every step.
        let _ = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-4, model, grads);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    StepBench {
        framework: format!("burn 0.22.1 ({backend})"),
        model: kind.name().to_owned(),
        batch,
        image_size,
        threads: rayon::current_num_threads(),
        steps,
        median_step_ms: median * 1e3,
        images_per_second: batch as f64 / median,
    }
}
