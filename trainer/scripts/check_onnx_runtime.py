#!/usr/bin/env python3
"""Loads an exported classifier in ONNX Runtime and compares it with the run it came from:
every image of predictions.csv is preprocessed independently here (Pillow: EXIF orientation,
gray, bilinear resize, the manifest's mean/std) and scored, and the probabilities and the
ROC-AUC per split are compared with fv-train's.

    pip install onnxruntime pillow numpy scikit-learn
    python3 trainer/scripts/check_onnx_runtime.py models/NAME.onnx RUN DATA_DIR

Pillow's resize differs from fv-core's by up to one grey level, so probabilities agree
closely but not bit for bit.
"""
import csv
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score

onnx_path, run, data = sys.argv[1:4]
manifest = json.load(open(onnx_path[:-5] + ".json"))
assert hashlib.sha256(open(onnx_path, "rb").read()).hexdigest() == manifest["onnx_sha256"], "sha256 mismatch"
spec = manifest["input"]
mean = np.array(spec["mean"], np.float32)[:, None, None]
std = np.array(spec["std"], np.float32)[:, None, None]
sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name

rows = list(csv.DictReader(open(os.path.join(run, "predictions.csv"))))
diffs, by_split = [], {}
for r in rows:
    sub = "Fractured" if r["fractured"] == "1" else "Non_fractured"
    im = ImageOps.exif_transpose(Image.open(os.path.join(data, "images", sub, r["id"]))).convert("L")
    x = np.asarray(im.resize((spec["width"], spec["height"]), Image.BILINEAR), np.float32) / 255.0
    x = ((np.repeat(x[None], 3, 0) - mean) / std)[None].astype(np.float32)
    p = float(sess.run(None, {name: x})[0][0, 1])
    diffs.append(abs(p - float(r["probability"])))
    by_split.setdefault(r["split"], []).append((int(r["fractured"]), p, float(r["probability"])))

print(f"{len(rows)} images: |ORT - fv-train| median {np.median(diffs):.4f}, 95th pct {np.percentile(diffs, 95):.4f}, max {max(diffs):.4f}")
for split, v in by_split.items():
    y, ort_p, ours = map(np.array, zip(*v))
    print(f"{split}: ROC-AUC ORT {roc_auc_score(y, ort_p):.4f} vs fv-train {roc_auc_score(y, ours):.4f}")
