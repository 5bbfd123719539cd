//! The activations of EfficientNet-Lite (ReLU6) and of the detector's neck (SiLU), each one
//! pass forward and one backward when training on the CPU (`flex`).
//!
//! ReLU6 is written `relu(x) − relu(x − 6)` because burn-onnx 0.22 has no Clip: four tensors
//! forward and as many backward on flex, and burn's `clamp` was slower still (BENCHMARKS.md).
//! SiLU is a sigmoid and a product. Elsewhere (evaluation, export, GPUs) the composed forms run
//! unchanged, so the exported graph is the one burn would export.

use super::flex_conv::{direct_on, f32s};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::activation::{relu, silu as silu_composed};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x · σ(x)`.
    Silu,
}

impl Act {
    fn forward(self, x: f32) -> f32 {
        match self {
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Silu => x / (1.0 + (-x).exp()),
        }
    }

    /// The derivative at `x`.
    fn slope(self, x: f32) -> f32 {
        match self {
            Act::Relu6 => f32::from(x > 0.0 && x < 6.0),
            Act::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
        }
    }
}

/// An element-wise activation as a backend extension: flex computes it, and the autodiff
/// backend over flex records [`ActBackward`] for it.
#[backend_extension(Flex, Autodiff)]
pub trait ActBackend: Backend {
    /// `act` applied to every element of `x`.
    fn activation(x: FloatTensor<Self>, act: Act) -> FloatTensor<Self>;
}

const CHUNK: usize = 1 << 14;

/// `f` of every element, in parallel chunks.
fn map(xs: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (r, &a) in o.iter_mut().zip(x) {
                *r = f(a);
            }
        });
    out
}

/// `f` of every pair of elements of two slices of equal length, in parallel chunks.
fn map2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
        .for_each(|(o, (x, y))| {
            for ((r, &a), &b) in o.iter_mut().zip(x).zip(y) {
                *r = f(a, b);
            }
        });
    out
}

fn like(x: &FlexTensor, values: Vec<f32>) -> FlexTensor {
    let shape = Shape::from(x.layout().shape().to_vec());
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl ActBackend for Flex {
    fn activation(x: FlexTensor, act: Act) -> FlexTensor {
        let values = map(&f32s(&x), |v| act.forward(v));
        like(&x, values)
    }
}

#[derive(Debug)]
struct ActBackward;

impl Backward<Flex, 1> for ActBackward {
    type State = (NodeId, Act);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, act) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        if let Some(node) = node_x {
            let values = map2(&f32s(&x), &f32s(&grad), |v, g| g * act.slope(v));
            grads.register::<Flex>(node.id, like(&x, values));
        }
    }
}

impl<C: CheckpointStrategy> ActBackend for Autodiff<Flex, C> {
    fn activation(x: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        match ActBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                prep.finish((x_state, act), Flex::activation(x.into_primitive(), act))
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::activation(x.into_primitive(), act)),
        }
    }
}

fn direct<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as ActBackend>::activation(x.into_dispatch(), act))
}

/// ReLU6 as `relu(x) − relu(x − 6)`: the same function, written with ops that burn-onnx 0.22
/// lowers to ONNX, so the exported graph is the trained one; one pass each way in training on
/// the CPU.
pub fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if direct_on(&x.device()) {
        return direct(x, Act::Relu6);
    }
    relu(x.clone()) - relu(x - 6.0)
}

/// SiLU, `x · σ(x)`; one pass each way in training on the CPU.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if direct_on(&x.device()) {
        return direct(x, Act::Silu);
    }
    silu_composed(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::flex_conv::set_enabled;
    use crate::models::flex_conv::tests::SWITCH;
    use burn::tensor::{Device, Distribution};

    /// The direct output and input gradient equal the composed forms' on random values that
    /// cross both of ReLU6's corners.
    #[test]
    fn activations_match_burns() {
        let _turn = SWITCH.lock().unwrap();
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([2, 3, 37, 41], Distribution::Normal(2.0, 4.0), &device)
            .require_grad();
        let mix = Tensor::<4>::random([2, 3, 37, 41], Distribution::Normal(0.0, 1.0), &device);
        for (name, f) in [
            ("relu6", relu6::<4> as fn(Tensor<4>) -> Tensor<4>),
            ("silu", silu::<4>),
        ] {
            let run = |on: bool| {
                set_enabled(on);
                assert_eq!(direct_on(&x.device()), on);
                let y = f(x.clone());
                let grads = (y.clone() * mix.clone()).sum().backward();
                let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
                (v(y), v(x.grad(&grads).unwrap()))
            };
            let burn = run(false);
            let ours = run(true);
            set_enabled(true);
            for (what, a, b) in [("output", &burn.0, &ours.0), ("gradient", &burn.1, &ours.1)] {
                for (i, (u, v)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * (1.0 + u.abs()),
                        "{name} {what}[{i}]: burn {u} direct {v}"
                    );
                }
            }
        }
    }
}
