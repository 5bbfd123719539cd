#!/usr/bin/env python3
"""The stride-2 depthwise experiment of BENCHMARKS.md ("Stride-2 depthwise on tract"): rewrite
every grouped Conv with stride 2 as the same Conv at stride 1 followed by Slice(steps 2) on the
spatial axes, which computes every kept output with the same taps on tract's vectorised
stride-1 kernel. Writes the rewritten classifier and a manifest naming its sha256 into OUT, and
checks on ONNX Runtime that both graphs give the same output. Time both with

    fv-edge bench --models OUT --engines tract --threads 2 --iterations 15 --json

Measured slower on tract (2026-12-05), so the exporter does not apply it.

Usage: stride2_depthwise_experiment.py MODELS_DIR/NAME.json OUT_DIR
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def rewrite(model: onnx.ModelProto) -> int:
    g = model.graph
    nodes, count = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Conv" or attrs.get("group", 1) == 1 or list(attrs.get("strides", [1, 1])) != [2, 2]:
            nodes.append(n)
            continue
        count += 1
        for a in n.attribute:
            if a.name == "strides":
                a.ints[:] = [1, 1]
        out, full = n.output[0], n.output[0] + "_stride1"
        n.output[0] = full
        p = f"dw_s2_{count}"
        # Slice [0, end) step 2 keeps ceil(L1 / 2) positions of the stride-1 output of length
        # L1 = L + pads - k + 1, which is the stride-2 output length floor((L1 - 1) / 2) + 1.
        for name, values in [("starts", [0, 0]), ("ends", [2**62, 2**62]), ("axes", [2, 3]), ("steps", [2, 2])]:
            g.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), f"{p}_{name}"))
        nodes += [n, helper.make_node("Slice", [full] + [f"{p}_{k}" for k in ("starts", "ends", "axes", "steps")], [out], name=f"{p}_slice")]
    del g.node[:]
    g.node.extend(nodes)
    return count


def main() -> None:
    manifest_path, out_dir = sys.argv[1], sys.argv[2]
    onnx_path = manifest_path[: -len(".json")] + ".onnx"
    model = onnx.load(onnx_path)
    print(f"rewrote {rewrite(model)} stride-2 depthwise convolutions")
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    os.makedirs(out_dir, exist_ok=True)
    name = os.path.basename(onnx_path)
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)
    manifest = json.load(open(manifest_path))
    manifest["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out_dir, os.path.basename(manifest_path)), "w") as f:
        json.dump(manifest, f, indent=2)
    x = np.random.RandomState(0).randn(*[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    feed = {model.graph.input[0].name: x}
    a = ort.InferenceSession(onnx_path).run(None, feed)[0]
    b = ort.InferenceSession(data).run(None, feed)[0]
    print(f"ONNX Runtime: largest difference {np.abs(a - b).max()}")


if __name__ == "__main__":
    main()
