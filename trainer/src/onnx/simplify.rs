//! Rewrites that keep a graph's function and make it smaller, faster and easier to quantize:
//! BatchNormalization folded into the Conv before it, and the ReLU6 that burn-onnx 0.22
//! lowers as `relu(x) − relu(x − 6)` (it has no Clip) turned back into one `Clip(0, 6)`.

use super::graph::{self, float_tensor, GraphProto, Index};

/// What [`simplify`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Simplified {
    /// BatchNormalization nodes folded into convolutions.
    pub batch_norms_folded: usize,
    /// `relu(x) − relu(x − 6)` patterns replaced by Clip.
    pub relu6_to_clip: usize,
}

/// Applies every rewrite to `g`.
pub fn simplify(g: &mut GraphProto) -> Simplified {
    let s = Simplified {
        batch_norms_folded: fold_batch_norms(g),
        relu6_to_clip: relu6_to_clip(g),
    };
    graph::prune_initializers(g);
    s
}

/// Folds `BatchNormalization(Conv(x, W, b))` into `Conv(x, W', b')` where the Conv's output
/// feeds only the BatchNormalization and all parameters are initializers:
/// `W'ₒ = Wₒ·γₒ/√(σ²ₒ+ε)`, `b'ₒ = (bₒ − μₒ)·γₒ/√(σ²ₒ+ε) + βₒ`.
pub fn fold_batch_norms(g: &mut GraphProto) -> usize {
    let mut folded = 0;
    loop {
        let idx = Index::new(g);
        let Some((conv_i, bn_i, w, b)) = g.node.iter().enumerate().find_map(|(bn_i, bn)| {
            if bn.op_type != "BatchNormalization" || bn.output.len() != 1 {
                return None;
            }
            let &conv_i = idx.producer.get(&bn.input[0])?;
            let conv = &g.node[conv_i];
            if conv.op_type != "Conv" || idx.uses(g, &conv.output[0]) != 1 {
                return None;
            }
            let p = |k: usize| idx.init_floats(g, bn.input.get(k)?);
            let (gamma, beta, mean, var) = (p(1)?, p(2)?, p(3)?, p(4)?);
            let eps = graph::get_float(bn, "epsilon").unwrap_or(1e-5);
            let w_name = conv.input.get(1)?;
            let w_t = &g.initializer[*idx.initializer.get(w_name)?];
            let mut w = graph::floats(w_t)?;
            let out = *w_t.dims.first()? as usize;
            if gamma.len() != out || w.len() % out != 0 {
                return None;
            }
            let bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
                Some(b) => idx.init_floats(g, b)?,
                None => vec![0.0; out],
            };
            let per = w.len() / out;
            let mut b = vec![0.0f32; out];
            for o in 0..out {
                let k = gamma[o] / (var[o] + eps).sqrt();
                w[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= k);
                b[o] = (bias[o] - mean[o]) * k + beta[o];
            }
            Some((conv_i, bn_i, (w_t.dims.clone(), w), b))
        }) else {
            return folded;
        };
        let conv = &g.node[conv_i];
        let w_name = format!("{}.folded_weight", conv.output[0]);
        let b_name = format!("{}.folded_bias", conv.output[0]);
        g.initializer.push(float_tensor(&w_name, &w.0, &w.1));
        g.initializer
            .push(float_tensor(&b_name, &[b.len() as i64], &b));
        let bn_out = g.node[bn_i].output[0].clone();
        let conv = &mut g.node[conv_i];
        conv.input.truncate(1);
        conv.input.push(w_name);
        conv.input.push(b_name);
        conv.output[0] = bn_out;
        g.node.remove(bn_i);
        folded += 1;
    }
}

/// Replaces `Sub(Relu(x), Relu(Sub(x, 6)))` with `Clip(x, 0, 6)`.
pub fn relu6_to_clip(g: &mut GraphProto) -> usize {
    let idx = Index::new(g);
    let scalar = |name: &str| {
        idx.init_floats(g, name)
            .filter(|v| v.len() == 1)
            .map(|v| v[0])
    };
    let single = |t: &str| idx.uses(g, t) == 1;
    let op_of = |t: &str| idx.producer.get(t).map(|&i| (i, &g.node[i]));
    // (outer Sub, the three nodes it replaces, x)
    let mut found: Vec<(usize, [usize; 3], String)> = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type != "Sub" || n.input.len() != 2 {
            continue;
        }
        let (Some((r1, relu1)), Some((r2, relu2))) = (op_of(&n.input[0]), op_of(&n.input[1]))
        else {
            continue;
        };
        if relu1.op_type != "Relu" || relu2.op_type != "Relu" {
            continue;
        }
        let Some((s, sub6)) = op_of(&relu2.input[0]) else {
            continue;
        };
        let x = &relu1.input[0];
        if sub6.op_type != "Sub"
            || &sub6.input[0] != x
            || scalar(&sub6.input[1]) != Some(6.0)
            || !single(&relu1.output[0])
            || !single(&relu2.output[0])
            || !single(&sub6.output[0])
        {
            continue;
        }
        found.push((i, [r1, r2, s], x.clone()));
    }
    if found.is_empty() {
        return 0;
    }
    g.initializer
        .push(float_tensor("fv.clip_min_0", &[], &[0.0]));
    g.initializer
        .push(float_tensor("fv.clip_max_6", &[], &[6.0]));
    let mut drop = vec![false; g.node.len()];
    for (i, parts, x) in &found {
        let out = g.node[*i].output[0].clone();
        let name = format!("{}.relu6", out);
        g.node[*i] = graph::node(
            "Clip",
            &name,
            &[x, "fv.clip_min_0", "fv.clip_max_6"],
            &[&out],
        );
        for &p in parts {
            drop[p] = true;
        }
    }
    let mut k = 0;
    g.node.retain(|_| {
        k += 1;
        !drop[k - 1]
    });
    found.len()
}
