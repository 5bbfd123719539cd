#!/usr/bin/env python3
"""Cross-checks the preprocessing goldens against Pillow's antialiased bilinear resize, an
implementation independent of ours. Run from the repository root after blessing new goldens:

    pip install pillow numpy && python3 core/tests/golden/compare_with_pillow.py

Seen on 2026-11-29: letterbox max difference 0.0039 (one grey level of 255), stretch max
difference 0.017 in ImageNet-normalized units (one grey level / 0.229).
"""
import json

import numpy as np
from PIL import Image, ImageOps

SAMPLE = "tests/data/fracatlas-sample/images/Fractured/"
golden = json.load(open("core/tests/golden/preprocess.json"))


def grid(plane):
    h, w = plane.shape
    return np.array([plane[gy * h // 8 + h // 16, gx * w // 8 + w // 16] for gy in range(8) for gx in range(8)])


im = ImageOps.exif_transpose(Image.open(SAMPLE + "IMG0002322.jpg")).convert("L")
canvas = np.full((640, 640), 114 / 255.0)
canvas[:, 64:64 + 512] = np.asarray(im.resize((512, 640), Image.BILINEAR)) / 255.0
ours = np.array(golden["images/Fractured/IMG0002322.jpg yolo640_letterbox"]["grid8x8_channel0"])
d1 = np.abs(ours - grid(canvas)).max()

im = ImageOps.exif_transpose(Image.open(SAMPLE + "IMG0002628.jpg")).convert("L")
plane = (np.asarray(im.resize((224, 224), Image.BILINEAR)) / 255.0 - 0.485) / 0.229
ours = np.array(golden["images/Fractured/IMG0002628.jpg imagenet224_stretch"]["grid8x8_channel0"])
d2 = np.abs(ours - grid(plane)).max()

print(f"letterbox max |ours - pillow| = {d1:.4f}; stretch = {d2:.4f}")
assert d1 <= 2 / 255 and d2 <= 2 / 255 / 0.229, "preprocessing drifted from Pillow's bilinear"
