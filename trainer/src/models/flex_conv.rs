//! Convolutions for training on the CPU (`flex`): depthwise with a direct backward pass,
//! pointwise (1×1) as a batched matrix product.
//!
//! burn 0.22's generic backward for grouped convolutions computes the weight gradient one
//! channel at a time (a full `conv2d` call, slices and a `slice_assign` per channel) and the
//! input gradient through a grouped `conv_transpose2d`; on EfficientNet-Lite0, which is mostly
//! depthwise convolutions, that made a training step 3.0× PyTorch's (BENCHMARKS.md). Here the
//! forward stays burn's (flex has a depthwise fast path) and the backward is one pass per
//! (image, channel) plane, in parallel over planes, with the stride-1 inner loops written as
//! contiguous multiply-adds the compiler vectorises.
//!
//! The 1×1 convolutions (two thirds of the model's multiply-adds) go through burn's generic
//! convolution backward too, which transposes activations (`swap_dims(0, 1)`) and copies them
//! into place: `copy_2d_tiled` was the largest single entry in the step's profile (18 %). As
//! `W · x` per image, burn's matmul backward runs them on the same gemm kernels without those
//! copies.
//!
//! Both are used only where they apply: an autodiff tensor on the flex device, no bias or
//! dilation (depthwise: square stride, TensorFlow "SAME" padding; pointwise: stride 1, no
//! padding). Everything else (evaluation, ONNX export through burn's graph capture, GPUs) takes
//! burn's `Conv2d` unchanged, so the exported graph is the one burn would export.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Shape, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the direct paths on (the default) or off (burn's own), for benchmarks and for the
/// tests that compare the two: these convolutions, `flex_norm`'s BatchNorm and `flex_act`'s
/// activations.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`forward`] uses the direct backward pass where it applies.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Padding `[top, left, bottom, right]`.
type Padding = [usize; 4];

/// The depthwise convolution as a backend extension: flex computes it, and the autodiff
/// backend over flex records [`DepthwiseBackward`] for it.
#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseBackend: Backend {
    /// `x` `[n, c, h, w]`, `weight` `[c, 1, kh, kw]`, no bias, no dilation.
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: Padding,
    ) -> FloatTensor<Self>;
}

fn options(stride: usize, p: Padding, groups: usize) -> ConvOptions<2> {
    ConvOptions::new_with_padding([stride; 2], [(p[0], p[2]), (p[1], p[3])], [1, 1], groups)
}

impl DepthwiseBackend for Flex {
    fn depthwise_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        stride: usize,
        padding: Padding,
    ) -> FlexTensor {
        let groups = weight.layout().shape()[0];
        Flex::conv2d(x, weight, None, options(stride, padding, groups))
    }
}

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 2> for DepthwiseBackward {
    type State = (NodeId, NodeId, usize, Padding);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, stride, padding) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let w: FlexTensor = checkpointer.retrieve_node_output(w_state);
        let (gx, gw) = backward(&x, &w, &grad, stride, padding);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, gx);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, gw);
        }
    }
}

impl<C: CheckpointStrategy> DepthwiseBackend for Autodiff<Flex, C> {
    fn depthwise_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: Padding,
    ) -> FloatTensor<Self> {
        match DepthwiseBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, w_state, stride, padding),
                    Flex::depthwise_conv2d(
                        x.into_primitive(),
                        weight.into_primitive(),
                        stride,
                        padding,
                    ),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::depthwise_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                stride,
                padding,
            )),
        }
    }
}

pub(crate) fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("f32 tensor")
                .to_vec(),
        ),
    }
}

/// The output positions `o` in `0..out` with `o · stride + tap − pad` inside `0..size`.
fn valid_range(
    out: usize,
    size: usize,
    stride: usize,
    tap: usize,
    pad: usize,
) -> std::ops::Range<usize> {
    let lo = if pad > tap {
        (pad - tap).div_ceil(stride)
    } else {
        0
    };
    let hi = if size + pad > tap {
        ((size + pad - tap - 1) / stride + 1).min(out)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// The input and weight gradients of a depthwise convolution, directly.
fn backward(
    x: &FlexTensor,
    w: &FlexTensor,
    g: &FlexTensor,
    stride: usize,
    pad: Padding,
) -> (FlexTensor, FlexTensor) {
    let xd = x.layout().shape().to_vec();
    let wd = w.layout().shape().to_vec();
    let gd = g.layout().shape().to_vec();
    let (n, c, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (kh, kw) = (wd[2], wd[3]);
    let (ho, wo) = (gd[2], gd[3]);
    let (xs, ws, gs) = (f32s(x), f32s(w), f32s(g));
    let (pt, pl) = (pad[0], pad[1]);
    let mut gx = vec![0f32; n * c * h * wi];
    let partial: Vec<Vec<f32>> = gx
        .par_chunks_mut(h * wi)
        .enumerate()
        .map(|(p, gxp)| {
            let ch = p % c;
            let xp = &xs[p * h * wi..(p + 1) * h * wi];
            let gp = &gs[p * ho * wo..(p + 1) * ho * wo];
            let wc = &ws[ch * kh * kw..(ch + 1) * kh * kw];
            let mut gw = vec![0f32; kh * kw];
            for i in 0..kh {
                for oh in valid_range(ho, h, stride, i, pt) {
                    let ih = oh * stride + i - pt;
                    let grow = &gp[oh * wo..(oh + 1) * wo];
                    let xrow = &xp[ih * wi..(ih + 1) * wi];
                    let gxrow = &mut gxp[ih * wi..(ih + 1) * wi];
                    for j in 0..kw {
                        let r = valid_range(wo, wi, stride, j, pl);
                        if r.is_empty() {
                            continue;
                        }
                        let wv = wc[i * kw + j];
                        let first = r.start * stride + j - pl;
                        let gslice = &grow[r.clone()];
                        let mut acc = 0f32;
                        if stride == 1 {
                            let xslice = &xrow[first..first + gslice.len()];
                            let gxslice = &mut gxrow[first..first + gslice.len()];
                            for ((gv, xv), gxv) in gslice.iter().zip(xslice).zip(gxslice) {
                                acc += gv * xv;
                                *gxv += wv * gv;
                            }
                        } else {
                            for (k, gv) in gslice.iter().enumerate() {
                                let iw = first + k * stride;
                                acc += gv * xrow[iw];
                                gxrow[iw] += wv * gv;
                            }
                        }
                        gw[i * kw + j] += acc;
                    }
                }
            }
            gw
        })
        .collect();
    let mut gw = vec![0f32; c * kh * kw];
    for (p, part) in partial.iter().enumerate() {
        let ch = p % c;
        for (a, b) in gw[ch * kh * kw..(ch + 1) * kh * kw].iter_mut().zip(part) {
            *a += b;
        }
    }
    (
        FlexTensor::from_data(TensorData::new(gx, Shape::from(xd))),
        FlexTensor::from_data(TensorData::new(gw, Shape::from(wd))),
    )
}

/// TensorFlow's "SAME" padding for one axis, as burn computes it: `(begin, end)`.
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Whether the direct paths apply on `device`: they are on, and it is the flex device under
/// autodiff (training on the CPU).
pub(crate) fn direct_on(device: &Device) -> bool {
    enabled() && device.is_autodiff() && device.clone().inner() == Device::flex()
}

fn training_on_flex(conv: &Conv2d, x: &Tensor<4>) -> bool {
    direct_on(&x.device()) && conv.bias.is_none() && conv.dilation == [1, 1]
}

fn pointwise_applies(conv: &Conv2d, x: &Tensor<4>) -> bool {
    training_on_flex(conv, x)
        && conv.kernel_size == [1, 1]
        && conv.stride == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Same)
}

fn depthwise_applies(conv: &Conv2d, x: &Tensor<4>) -> bool {
    let channels = x.dims()[1];
    training_on_flex(conv, x)
        && conv.groups == channels
        && conv.weight.dims()[0] == channels
        && conv.stride[0] == conv.stride[1]
        && matches!(conv.padding, PaddingConfig2d::Same)
}

/// `conv.forward(x)` for a 1×1 convolution, as a batched matrix product where it applies.
pub fn pointwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if !pointwise_applies(conv, &x) {
        return conv.forward(x);
    }
    let [n, cin, h, w] = x.dims();
    let [cout, ..] = conv.weight.dims();
    let weight = conv.weight.val().reshape([1, cout, cin]);
    weight
        .matmul(x.reshape([n, cin, h * w]))
        .reshape([n, cout, h, w])
}

/// `conv.forward(x)` for a depthwise convolution, with the direct backward pass where it
/// applies.
pub fn depthwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if !depthwise_applies(conv, &x) {
        return conv.forward(x);
    }
    let (s, [kh, kw]) = (conv.stride[0], conv.kernel_size);
    let (pt, pb) = same_padding(h, kh, s);
    let (pl, pr) = same_padding(w, kw, s);
    let out = <Dispatch as DepthwiseBackend>::depthwise_conv2d(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        s,
        [pt, pl, pb, pr],
    );
    Tensor::from_dispatch(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;
    use std::sync::Mutex;

    /// The switch is global: the tests that flip it take turns.
    pub(crate) static SWITCH: Mutex<()> = Mutex::new(());

    /// The direct gradients equal burn's own on random tensors, for every kernel, stride and
    /// odd/even size EfficientNet-Lite0 has.
    #[test]
    fn gradients_match_burns() {
        let _turn = SWITCH.lock().unwrap();
        let device = Device::flex().autodiff();
        for (k, s, size) in [
            (3, 1, 9),
            (3, 2, 9),
            (3, 2, 8),
            (5, 1, 7),
            (5, 2, 10),
            (5, 2, 11),
        ] {
            let channels = 6;
            let conv = Conv2dConfig::new([channels, channels], [k, k])
                .with_stride([s, s])
                .with_groups(channels)
                .with_padding(PaddingConfig2d::Same)
                .with_bias(false)
                .init(&device);
            let x = Tensor::<4>::random(
                [2, channels, size, size + 1],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            // A weighted sum, so that every output position's gradient differs.
            let ho = size.div_ceil(s);
            let wo = (size + 1).div_ceil(s);
            let mix = Tensor::<4>::random(
                [2, channels, ho, wo],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |direct: bool| {
                set_enabled(direct);
                assert_eq!(depthwise_applies(&conv, &x), direct);
                let y = depthwise(&conv, x.clone());
                let loss = (y.clone() * mix.clone()).sum();
                let grads = loss.backward();
                let gx = x
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let gw = conv
                    .weight
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                (y.into_data().try_to_vec::<f32>().unwrap(), gx, gw)
            };
            let (y0, gx0, gw0) = run(false);
            let (y1, gx1, gw1) = run(true);
            set_enabled(true);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                        "k{k} s{s} {size}: {what}[{i}] burn {u} direct {v}"
                    );
                }
            };
            close(&y0, &y1, "output");
            close(&gx0, &gx1, "input gradient");
            close(&gw0, &gw1, "weight gradient");
        }
    }

    #[test]
    fn pointwise_matches_burns_conv() {
        let _turn = SWITCH.lock().unwrap();
        let device = Device::flex().autodiff();
        let conv = Conv2dConfig::new([5, 7], [1, 1])
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        let x = Tensor::<4>::random([3, 5, 4, 6], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let mix = Tensor::<4>::random([3, 7, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |on: bool| {
            set_enabled(on);
            assert_eq!(pointwise_applies(&conv, &x), on);
            let y = pointwise(&conv, x.clone());
            let grads = (y.clone() * mix.clone()).sum().backward();
            let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            (
                v(y),
                v(x.grad(&grads).unwrap()),
                v(conv.weight.val().grad(&grads).unwrap()),
            )
        };
        let burn = run(false);
        let ours = run(true);
        set_enabled(true);
        for (a, b) in [(&burn.0, &ours.0), (&burn.1, &ours.1), (&burn.2, &ours.2)] {
            assert_eq!(a.len(), b.len());
            for (u, v) in a.iter().zip(b.iter()) {
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                    "burn {u} matmul {v}"
                );
            }
        }
    }
}
