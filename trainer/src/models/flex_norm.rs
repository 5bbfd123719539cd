//! BatchNorm in training on the CPU (`flex`): the batch statistics and both gradients computed
//! directly, one pass per (image, channel) plane.
//!
//! burn 0.22 records BatchNorm in training as one autodiff operation, but flex computes it with
//! the backend's generic composition: the activations are transposed to `[channels, rest]`
//! (`swap_dims(0, 1)`, then copied into place), reduced, and broadcast back through half a dozen
//! element-wise operations forward and a dozen backward, each a fresh tensor. On
//! EfficientNet-Lite0, where every convolution is followed by a BatchNorm, that made the
//! layout copies (`copy_2d_tiled`) the largest single entry in the training step's profile and
//! a large share of its page faults. Here the forward is two reading passes and one writing
//! pass, the backward one reading pass and one writing pass, in parallel over planes.
//!
//! Only where it applies: an autodiff tensor of rank 4 on the flex device and a module in
//! training. Evaluation, export and other devices take burn's `BatchNorm` unchanged. The
//! running statistics are updated exactly as burn's module updates them.

use super::flex_conv::{direct_on, f32s};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::nn::BatchNorm;
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

/// BatchNorm with the batch's own statistics, as a backend extension: flex computes it, and
/// the autodiff backend over flex records [`BatchNormBackward`] for it.
#[backend_extension(Flex, Autodiff)]
pub trait NormBackend: Backend {
    /// `x` `[n, c, h, w]`, `gamma` and `beta` `[c]` → the output, the batch mean `[c]` and its
    /// biased variance `[c]` (what the running statistics are fed).
    fn batch_norm_train_direct(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// A sum over a slice with independent lanes, so that the compiler vectorises it; lanes of
/// f32 are exact enough for one plane, and the planes are added in f64.
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(xs, xs, |x, _| f(x))
}

/// The same over pairs of elements of two slices of equal length.
fn lane_sum2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in xc.zip(yc) {
        for ((a, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *a += f(u, v);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
}

/// Per-channel sums of per-plane values: `planes[p]` belongs to channel `p % channels`.
fn per_channel(planes: &[f64], channels: usize) -> Vec<f64> {
    let mut out = vec![0f64; channels];
    for (p, v) in planes.iter().enumerate() {
        out[p % channels] += v;
    }
    out
}

fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, Shape::from(vec![n])))
}

/// `(n, c, plane size)` of a `[n, c, …]` tensor.
fn planes(x: &FlexTensor) -> (usize, usize, usize) {
    let d = x.layout().shape().to_vec();
    (d[0], d[1], d[2..].iter().product())
}

impl NormBackend for Flex {
    fn batch_norm_train_direct(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = x.layout().shape().to_vec();
        let (n, c, plane) = planes(&x);
        let count = (n * plane) as f64;
        let xs = f32s(&x);
        let sums: Vec<f64> = xs.par_chunks(plane).map(|p| lane_sum(p, |v| v)).collect();
        let mean: Vec<f64> = per_channel(&sums, c).iter().map(|s| s / count).collect();
        // Two passes rather than E[x²] − mean², which cancels where the mean is large.
        let squares: Vec<f64> = xs
            .par_chunks(plane)
            .enumerate()
            .map(|(p, xp)| {
                let m = mean[p % c] as f32;
                lane_sum(xp, |v| (v - m) * (v - m))
            })
            .collect();
        let var: Vec<f64> = per_channel(&squares, c).iter().map(|s| s / count).collect();
        let (g, b) = (f32s(&gamma), f32s(&beta));
        // y = x · scale + shift, per channel.
        let scale: Vec<f32> = (0..c)
            .map(|ch| (g[ch] as f64 / (var[ch] + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (b[ch] as f64 - mean[ch] * scale[ch] as f64) as f32)
            .collect();
        let mut y = vec![0f32; xs.len()];
        y.par_chunks_mut(plane)
            .zip(xs.par_chunks(plane))
            .enumerate()
            .for_each(|(p, (yp, xp))| {
                let (a, s) = (scale[p % c], shift[p % c]);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = v * a + s;
                }
            });
        (
            FlexTensor::from_data(TensorData::new(y, Shape::from(dims))),
            vector(mean.iter().map(|&m| m as f32).collect()),
            vector(var.iter().map(|&v| v as f32).collect()),
        )
    }
}

/// The input, gamma and beta gradients of BatchNorm with the batch's statistics, directly.
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    mean: &FlexTensor,
    var: &FlexTensor,
    epsilon: f64,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dims = x.layout().shape().to_vec();
    let (n, c, plane) = planes(x);
    let count = (n * plane) as f64;
    let (xs, gs) = (f32s(x), f32s(grad));
    let (g, m, v) = (f32s(gamma), f32s(mean), f32s(var));
    let inv_std: Vec<f64> = v
        .iter()
        .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
        .collect();
    // Per plane: Σ dy and Σ dy · (x − mean).
    let sums: Vec<(f64, f64)> = gs
        .par_chunks(plane)
        .zip(xs.par_chunks(plane))
        .enumerate()
        .map(|(p, (gp, xp))| {
            let mc = m[p % c];
            (lane_sum(gp, |d| d), lane_sum2(gp, xp, |d, x| d * (x - mc)))
        })
        .collect();
    let sum_dy = per_channel(&sums.iter().map(|s| s.0).collect::<Vec<_>>(), c);
    let sum_dy_xc = per_channel(&sums.iter().map(|s| s.1).collect::<Vec<_>>(), c);
    // dgamma = Σ dy · x̂ and dbeta = Σ dy; dx = γ/σ · (dy − Σdy/M − x̂ · Σ(dy · x̂)/M), written
    // as dx = k · dy + l · x + o per channel.
    let gamma_grad: Vec<f32> = (0..c)
        .map(|ch| (sum_dy_xc[ch] * inv_std[ch]) as f32)
        .collect();
    let mut coef = Vec::with_capacity(c);
    for ch in 0..c {
        let k = g[ch] as f64 * inv_std[ch];
        let l = -k * inv_std[ch] * inv_std[ch] * sum_dy_xc[ch] / count;
        let o = -k * sum_dy[ch] / count - l * m[ch] as f64;
        coef.push((k as f32, l as f32, o as f32));
    }
    let mut gx = vec![0f32; xs.len()];
    gx.par_chunks_mut(plane)
        .zip(gs.par_chunks(plane).zip(xs.par_chunks(plane)))
        .enumerate()
        .for_each(|(p, (out, (gp, xp)))| {
            let (k, l, o) = coef[p % c];
            for ((r, &d), &x) in out.iter_mut().zip(gp).zip(xp) {
                *r = k * d + l * x + o;
            }
        });
    (
        FlexTensor::from_data(TensorData::new(gx, Shape::from(dims))),
        vector(gamma_grad),
        vector(sum_dy.iter().map(|&s| s as f32).collect()),
    )
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (NodeId, NodeId, FlexTensor, FlexTensor, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, gamma_state, mean, var, epsilon) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let gamma: FlexTensor = checkpointer.retrieve_node_output(gamma_state);
        let (gx, ggamma, gbeta) = backward(&x, &gamma, &mean, &var, epsilon, &grad);
        for (node, g) in [(node_x, gx), (node_gamma, ggamma), (node_beta, gbeta)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> NormBackend for Autodiff<Flex, C> {
    fn batch_norm_train_direct(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let (y, mean, var) = Flex::batch_norm_train_direct(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                let state = (x_state, gamma_state, mean.clone(), var.clone(), epsilon);
                (
                    prep.finish(state, y),
                    Self::from_inner(mean),
                    Self::from_inner(var),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) = Flex::batch_norm_train_direct(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (
                    prep.finish(y),
                    Self::from_inner(mean),
                    Self::from_inner(var),
                )
            }
        }
    }
}

fn applies(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    bn.training.is_enabled() && direct_on(&x.device())
}

/// `bn.forward(x)`, with the direct statistics and gradients where they apply; the running
/// statistics are updated as burn's module updates them.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !applies(bn, &x) {
        return bn.forward(x);
    }
    let device = x.device();
    let (y, mean, var) = <Dispatch as NormBackend>::batch_norm_train_direct(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.epsilon,
    );
    let (mean, var) = (
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(var),
    );
    let running = |old: Tensor<1>, batch: Tensor<1>| {
        old.to_device(&device)
            .mul_scalar(1.0 - bn.momentum)
            .add(batch.detach().mul_scalar(bn.momentum))
            .detach()
    };
    bn.running_mean
        .update(running(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(running(bn.running_var.value_sync(), var));
    Tensor::from_dispatch(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::flex_conv::set_enabled;
    use crate::models::flex_conv::tests::SWITCH;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution};

    /// The direct output, gradients and running statistics equal burn's own, on planes whose
    /// size is and is not a multiple of the lane width, and on a shifted input (a large mean).
    #[test]
    fn batch_norm_matches_burns() {
        let _turn = SWITCH.lock().unwrap();
        let device = Device::flex().autodiff();
        for (shape, offset) in [
            ([3, 5, 7, 9], 0.0),
            ([2, 4, 4, 8], 0.0),
            ([4, 3, 5, 5], 40.0),
        ] {
            let channels = shape[1];
            let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device);
            let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.5), &device);
            // A module each: clones would share their running statistics.
            let module = || {
                let mut bn = BatchNormConfig::new(channels)
                    .with_momentum(0.03)
                    .init(&device);
                bn.gamma = Param::from_tensor(gamma.clone());
                bn.beta = Param::from_tensor(beta.clone());
                bn
            };
            let x = (Tensor::<4>::random(shape, Distribution::Normal(0.0, 2.0), &device) + offset)
                .require_grad();
            let mix = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |direct: bool| {
                set_enabled(direct);
                let bn = module();
                assert_eq!(applies(&bn, &x), direct);
                let y = batch_norm(&bn, x.clone());
                let grads = (y.clone() * mix.clone()).sum().backward();
                let v1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                (
                    y.into_data().try_to_vec::<f32>().unwrap(),
                    x.grad(&grads)
                        .unwrap()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap(),
                    v1(bn.gamma.val().grad(&grads).unwrap()),
                    v1(bn.beta.val().grad(&grads).unwrap()),
                    v1(bn.running_mean.value()),
                    v1(bn.running_var.value()),
                )
            };
            let burn = run(false);
            let ours = run(true);
            set_enabled(true);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 2e-4 * (1.0 + u.abs()),
                        "{shape:?}: {what}[{i}] burn {u} direct {v}"
                    );
                }
            };
            close(&burn.0, &ours.0, "output");
            close(&burn.1, &ours.1, "input gradient");
            close(&burn.2, &ours.2, "gamma gradient");
            close(&burn.3, &ours.3, "beta gradient");
            close(&burn.4, &ours.4, "running mean");
            close(&burn.5, &ours.5, "running variance");
        }
    }
}
