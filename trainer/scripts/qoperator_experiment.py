#!/usr/bin/env python3
"""Issue 19's int8 experiment: which quantized form pays on which engine. Quantizes the shipped
fp32 models with ONNX Runtime's own static quantizer in both forms, QOperator (QLinearConv /
QLinearMatMul: integer kernels) and QDQ (QuantizeLinear / DequantizeLinear around float ops),
calibrated on real FracAtlas training images, and writes one models folder per variant (form, per-channel or per-tensor weights, depthwise
quantized or not) that `fv-edge bench` times on tract and ONNX Runtime:

    fv-edge bench --models OUT/VARIANT --engines tract,ort-cpu --threads 2 --iterations 15 --json

It also prints, on ONNX Runtime, the mean |Δp| of the classifier's fracture probability from
fp32 on validation images (the issue's bound: 0.03). Preprocessing here is PIL's bilinear
resize, the same for fp32 and int8, so the difference is the quantization's alone.

Usage: qoperator_experiment.py MODELS_DIR FRACATLAS_DIR OUT_DIR [CALIB_IMAGES] [CHECK_IMAGES]
"""
import csv
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from PIL import Image, ImageFile

# FracAtlas keeps its truncated JPEGs; read what they hold, as fv-core does.
ImageFile.LOAD_TRUNCATED_IMAGES = True

# The classifier only: ONNX Runtime 1.32's quantizer leaves the detector's Resize without its
# `sizes` input in QOperator form (the graph then fails to load).
CLASSIFIER = "efficientnet-lite0-fracatlas"


def preprocess(path: str, m: dict) -> np.ndarray:
    inp = m["input"]
    w, h = inp["width"], inp["height"]
    img = Image.open(path)
    img.draft("L", (w * 2, h * 2))
    img = img.convert("L")
    if inp["resize"] == "letterbox":
        s = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * s)), max(1, round(img.height * s))
        canvas = Image.new("L", (w, h), int(round(inp["pad_value"] * 255)))
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
        img = canvas
    else:
        img = img.resize((w, h), Image.BILINEAR)
    g = np.asarray(img, dtype=np.float32) / 255.0
    x = np.stack([(g - mu) / sd for mu, sd in zip(inp["mean"], inp["std"])])
    return x[None].astype(np.float32)


def split_images(data: str, split: str, n: int) -> list:
    """The first n images of the official split's list, half fractured where it has both."""
    folder = os.path.join(data, "Utilities", "Fracture Split")
    with open(os.path.join(folder, f"{split}.csv")) as f:
        frac = [r["image_id"] for r in csv.DictReader(f)]
    with open(os.path.join(data, "dataset.csv")) as f:
        rows = list(csv.DictReader(f))
    present = set(os.listdir(os.path.join(data, "images", "Non_fractured")))
    non = [r["image_id"] for r in rows if r["fractured"] == "0" and r["image_id"] in present]
    # Non-fractured images outside the official split: the tail for validation, the head
    # for calibration, so the two never share an image.
    non = non[: n // 2] if split == "train" else non[-(n // 2):]
    return [os.path.join(data, "images", "Fractured", i) for i in frac[: n - n // 2]] + [
        os.path.join(data, "images", "Non_fractured", i) for i in non
    ]


class Reader(CalibrationDataReader):
    def __init__(self, name: str, xs: list):
        self.name, self.it = name, iter(xs)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}


def timed(path: str, x: np.ndarray, threads: int, exact_u8: bool, n: int = 15) -> float:
    """ONNX Runtime p50 ms; `exact_u8` sets `session.x64quantprecision` as fv-edge does (U8U8
    kernels on a CPU without VNNI, whose U8S8 kernels saturate)."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    if exact_u8:
        o.add_session_config_entry("session.x64quantprecision", "1")
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    for _ in range(3):
        s.run(None, {name: x})
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        s.run(None, {name: x})
        ms.append((time.perf_counter() - t) * 1000)
    return round(float(np.median(ms)), 2)


# (folder, format, per-channel weights, op types quantized, depthwise left in float)
VARIANTS = [
    ("qdq", QuantFormat.QDQ, True, None, False),
    ("qoperator", QuantFormat.QOperator, True, None, False),
    ("qoperator-conv", QuantFormat.QOperator, True, ["Conv", "MatMul"], False),
    ("qoperator-conv-per-tensor", QuantFormat.QOperator, False, ["Conv", "MatMul"], False),
    ("qoperator-conv-per-tensor-no-dw", QuantFormat.QOperator, False, ["Conv", "MatMul"], True),
    ("qoperator-conv-no-dw", QuantFormat.QOperator, True, ["Conv", "MatMul"], True),
]


def main() -> None:
    models, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
    n_calib = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    n_check = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    calib_paths = split_images(data, "train", n_calib)
    check_paths = split_images(data, "valid", n_check)
    stem = CLASSIFIER
    m = json.load(open(os.path.join(models, stem + ".json")))
    fp32 = os.path.join(models, stem + ".onnx")
    name = m["input"]["name"]
    xs = [preprocess(p, m) for p in calib_paths]
    depthwise = [
        n.name
        for n in onnx.load(fp32).graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    print(
        f"{stem} fp32: ONNX Runtime p50 ms at 2 threads {timed(fp32, xs[0], 2, True)}",
        flush=True,
    )
    reference = ort.InferenceSession(fp32)
    ref = [reference.run(None, {name: preprocess(p, m)})[0][0, 1] for p in check_paths]
    for folder, qf, per_channel, ops, float_dw in VARIANTS:
        d = os.path.join(out, folder)
        os.makedirs(d, exist_ok=True)
        q = os.path.join(d, stem + "-int8.onnx")
        quantize_static(
            fp32,
            q,
            Reader(name, xs),
            quant_format=qf,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=depthwise if float_dw else [],
        )
        onnx.checker.check_model(onnx.load(q))
        counts = {}
        for n in onnx.load(q).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        man = dict(m)
        man["precision"] = "int8"
        man["onnx_sha256"] = hashlib.sha256(open(q, "rb").read()).hexdigest()
        json.dump(man, open(os.path.join(d, stem + "-int8.json"), "w"), indent=2)
        shutil.copy(fp32, os.path.join(d, stem + ".onnx"))
        shutil.copy(os.path.join(models, stem + ".json"), os.path.join(d, stem + ".json"))
        # Exact kernels, as fv-edge runs int8 (see `timed`).
        o = ort.SessionOptions()
        o.add_session_config_entry("session.x64quantprecision", "1")
        session = ort.InferenceSession(q, o, providers=["CPUExecutionProvider"])
        diffs = [
            abs(float(r) - float(session.run(None, {name: preprocess(p, m)})[0][0, 1]))
            for p, r in zip(check_paths, ref)
        ]
        print(
            f"{stem} {folder}: ops {dict(sorted(counts.items()))}; "
            f"ONNX Runtime p50 ms at 2 threads {timed(q, xs[0], 2, True)} "
            f"(U8S8 kernels: {timed(q, xs[0], 2, False)}); "
            f"mean |Δp| from fp32 {np.mean(diffs):.4f} (max {np.max(diffs):.4f}, "
            f"{len(diffs)} validation images)",
            flush=True,
        )


if __name__ == "__main__":
    main()
