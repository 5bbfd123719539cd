#!/usr/bin/env python3
"""Loads exported classifiers in ONNX Runtime and compares them with the run they came from:
every image of predictions.csv is preprocessed independently here (Pillow: EXIF orientation,
gray, bilinear resize, the manifest's mean/std) and scored by each model; the script prints
ROC-AUC per split for each model beside fv-train's (burn, fp32), and how far each model's
probabilities are from the first model's (e.g. int8 against fp32, both in ORT).

    pip install onnxruntime pillow numpy scikit-learn
    python3 trainer/scripts/check_onnx_runtime.py RUN DATA_DIR models/NAME.onnx [models/NAME-int8.onnx ...]

Pillow's resize differs from fv-core's by up to one grey level, so probabilities agree
closely but not bit for bit with fv-train's.
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

run, data, *models = sys.argv[1:]
if not models:
    sys.exit(__doc__)
rows = list(csv.DictReader(open(os.path.join(run, "predictions.csv"))))
y = np.array([int(r["fractured"]) for r in rows])
split = np.array([r["split"] for r in rows])
ours = np.array([float(r["probability"]) for r in rows])

scores = {}
for onnx_path in models:
    manifest = json.load(open(onnx_path[:-5] + ".json"))
    digest = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    assert digest == manifest["onnx_sha256"], f"{onnx_path}: sha256 does not match its manifest"
    spec = manifest["input"]
    mean = np.array(spec["mean"], np.float32)[:, None, None]
    std = np.array(spec["std"], np.float32)[:, None, None]
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    p = []
    for r in rows:
        sub = "Fractured" if r["fractured"] == "1" else "Non_fractured"
        im = ImageOps.exif_transpose(Image.open(os.path.join(data, "images", sub, r["id"]))).convert("L")
        x = np.asarray(im.resize((spec["width"], spec["height"]), Image.BILINEAR), np.float32) / 255.0
        x = ((np.repeat(x[None], 3, 0) - mean) / std)[None].astype(np.float32)
        p.append(float(sess.run(None, {name: x})[0][0, 1]))
    scores[onnx_path] = p = np.array(p)
    d = np.abs(p - ours)
    print(f"{onnx_path} ({manifest['precision']}), {len(rows)} images:")
    print(f"  |ORT - fv-train fp32| median {np.median(d):.4f}, 95th pct {np.percentile(d, 95):.4f}, max {d.max():.4f}")
    for s in ("valid", "test"):
        m = split == s
        print(f"  {s}: ROC-AUC ORT {roc_auc_score(y[m], p[m]):.4f} vs fv-train fp32 {roc_auc_score(y[m], ours[m]):.4f}")
    if "conversion" in manifest:
        c = manifest["conversion"]
        print(f"  manifest (tract): valid ROC-AUC {c['valid_roc_auc']:.4f}, fp32 {c['valid_roc_auc_reference']:.4f}")
first = models[0]
for other in models[1:]:
    d = np.abs(scores[other] - scores[first])
    print(f"{other} vs {first}, both in ORT: |diff| median {np.median(d):.4f}, 95th pct {np.percentile(d, 95):.4f}, max {d.max():.4f}")
