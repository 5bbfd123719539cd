#!/usr/bin/env python3
"""Validation only: ROC-AUC of two classifiers' logits averaged (weights fixed beforehand),
each image as the unit reads it (the `valid-classifier` rows of two fusion runs'
predictions.csv). Test rows are not read.

    python3 results/effl2-384-shift/ensemble.py A/predictions.csv B/predictions.csv
"""
import math
import sys


def rows(path):
    out = {}
    for line in open(path).read().splitlines()[1:]:
        split, ident, fractured, p = line.split(",")
        if split == "valid-classifier":
            p = min(max(float(p), 1e-6), 1 - 1e-6)
            out[ident] = (int(fractured), math.log(p / (1 - p)))
    return out


def auc(pairs):
    pos = [s for y, s in pairs if y == 1]
    neg = [s for y, s in pairs if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a.keys() == b.keys(), "the two runs read different validation images"
for w in (0.0, 0.5, 1.0):
    pairs = [(a[k][0], (1 - w) * a[k][1] + w * b[k][1]) for k in sorted(a)]
    print(f"weight of the second {w:.1f}: validation ROC-AUC {auc(pairs):.4f} ({len(pairs)} images)")
