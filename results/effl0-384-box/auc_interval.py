#!/usr/bin/env python3
"""Test ROC-AUC of a run's predictions.csv with a stratified bootstrap 95 % interval (2000
resamples, seed 29). Standard library only. Usage: auc_interval.py predictions.csv [split]"""
import csv, random, sys

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("split", "test") == (sys.argv[2] if len(sys.argv) > 2 else "test")]
key = "probability" if "probability" in rows[0] else [k for k in rows[0] if k.startswith("prob")][0]
pos = [float(r[key]) for r in rows if r["fractured"] in ("1", "true", "True")]
neg = [float(r[key]) for r in rows if r["fractured"] not in ("1", "true", "True")]

def auc(p, n):
    s = sorted([(v, 1) for v in p] + [(v, 0) for v in n])
    ranks, i = [0.0] * len(s), 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1][0] == s[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rp = sum(r for r, (_, y) in zip(ranks, s) if y)
    return (rp - len(p) * (len(p) + 1) / 2) / (len(p) * len(n))

rng = random.Random(29)
boot = sorted(auc(rng.choices(pos, k=len(pos)), rng.choices(neg, k=len(neg))) for _ in range(2000))
print(f"n {len(pos)}/{len(neg)}  ROC-AUC {auc(pos, neg):.3f} ({boot[49]:.3f}-{boot[1949]:.3f})")
