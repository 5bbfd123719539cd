//! An exponential moving average of a model's weights, kept beside the weights being trained.
//!
//! Evaluated and saved in their place: the detector's mean of its last ten epochs scored higher
//! on validation than any one of them (RESULTS.md), and an average kept step by step costs one
//! multiply-add per parameter instead of a checkpoint per epoch. Batch-norm statistics are
//! averaged like the weights (they are running states). Tensors pair by their place in the
//! module, not by id: a resume point restores the parameters' ids but not the running states'.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use std::collections::HashMap;

/// The average and how many updates it has seen.
pub struct Ema<M> {
    /// The averaged model, on the plain (non-autodiff) device: what is validated and saved.
    pub model: M,
    decay: f64,
    updates: u64,
}

impl<M: Module> Ema<M> {
    /// An average that starts at `model` (a plain one: [`Module::valid`] of the trained one)
    /// after `updates` updates, moving at `decay` per step once warmed up.
    pub fn new(model: M, decay: f64, updates: u64) -> Self {
        Ema {
            model,
            decay,
            updates,
        }
    }

    /// The weight the average keeps at the next update: `decay`, less while few updates are
    /// in, so that the initial weights are forgotten quickly.
    fn next_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds in `trained` (a plain model of the same structure).
    pub fn update(&mut self, trained: M) {
        let mut current = Collect::default();
        trained.visit(&mut current);
        let decay = self.next_decay();
        let mut blend = Blend {
            current: current.tensors,
            path: Vec::new(),
            decay,
            missing: 0,
        };
        // `trained` holds the place while the average is mapped; its tensors are collected.
        let average = std::mem::replace(&mut self.model, trained);
        self.model = average.map(&mut blend);
        debug_assert_eq!(
            blend.missing, 0,
            "the average and the model differ in shape"
        );
        self.updates += 1;
    }
}

#[derive(Default)]
struct Collect {
    tensors: HashMap<String, Tensor<1>>,
    path: Vec<String>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.tensors.insert(self.path.join("."), t.reshape([n]));
    }
}

struct Blend {
    current: HashMap<String, Tensor<1>>,
    path: Vec<String>,
    decay: f64,
    missing: usize,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, avg, _) = param.consume();
        let value = match self.current.remove(&self.path.join(".")) {
            Some(now) => {
                let shape = avg.shape();
                avg.mul_scalar(self.decay) + now.reshape(shape).mul_scalar(1.0 - self.decay)
            }
            None => {
                self.missing += 1;
                avg
            }
        };
        Param::initialized(id, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Net {
        linear: Linear,
        norm: BatchNorm,
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_average_moves_toward_the_trained_weights_and_carries_batch_norm_statistics() {
        let device = Device::flex();
        let net = Net {
            linear: LinearConfig::new(2, 1).init(&device),
            norm: BatchNormConfig::new(1).init(&device),
        };
        let start_w = values(net.linear.weight.val());
        let mut ema = Ema::new(net.clone(), 0.5, 100);
        // The trained model moves: weights to 1, batch-norm mean to 4 (a running state).
        let ones = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0], [2, 1]), &device);
        let mut trained = net.clone();
        trained.linear.weight = Param::initialized(trained.linear.weight.id, ones);
        trained.norm.running_mean = burn::module::RunningState::new(Tensor::<1>::from_data(
            TensorData::new(vec![4.0f32], [1]),
            &device,
        ));
        ema.update(trained);
        let w = values(ema.model.linear.weight.val());
        for (avg, start) in w.iter().zip(&start_w) {
            assert!(
                (avg - (0.5 * start + 0.5)).abs() < 1e-6,
                "{avg} from {start}"
            );
        }
        let mean = values(ema.model.norm.running_mean.value());
        assert!((mean[0] - 2.0).abs() < 1e-6, "{mean:?}");
    }

    #[test]
    fn a_young_average_forgets_its_start_quickly() {
        let device = Device::flex();
        let net = LinearConfig::new(1, 1).init(&device);
        let ema = Ema::new(net, 0.999, 0);
        assert!((ema.next_decay() - 0.1).abs() < 1e-12);
        let old = Ema::new(LinearConfig::new(1, 1).init(&device), 0.999, 1_000_000);
        assert_eq!(old.next_decay(), 0.999);
    }
}
