#!/usr/bin/env python3
"""Readings from a JPEG decoded at the DCT scale the models need (`--reduced-decode`) against
the same JPEG decoded whole (the default), on FracAtlas images large enough to be
reduced: twice every model input side is kept, so with the shipped 384-px classifier
(stretched) a JPEG is reduced (to 1/2) only where its shorter side is >= 1536.

    python3 results/decode-scale/measure.py FRACATLAS_DIR FV_EDGE_BIN [N]

A sample of N such images (default 200, fixed seed) over both classes; the classifier and
detector both run on every image (`--detect always`). Writes summary.json beside itself.
"""
import json, os, random, subprocess, sys
from PIL import Image

root, exe = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
files = []
for cls in ("Fractured", "Non_fractured"):
    d = os.path.join(root, "images", cls)
    for f in sorted(os.listdir(d)):
        p = os.path.join(d, f)
        try:
            w, h = Image.open(p).size
        except Exception:
            continue
        if min(w, h) >= 1536:
            files.append(p)
random.Random(7).shuffle(files)
files = files[:n]

def run(extra):
    out = subprocess.run([exe, "infer", "--models", "models", "--detect", "always", *extra, *files],
                         capture_output=True, text=True, env={**os.environ, "FV_THREADS": "2"})
    return [json.loads(l) for l in out.stdout.splitlines()]

reduced, full = run(["--reduced-decode"]), run([])
dp, dbox, ok = [], 0, 0
for a, b in zip(reduced, full):
    if a.get("error") or b.get("error"):
        continue
    ok += 1
    dp.append(abs(a["fracture_probability"] - b["fracture_probability"]))
    dbox += len(a["boxes"]) != len(b["boxes"])
finding_changes = sum(a.get("finding") != b.get("finding") for a, b in zip(reduced, full))
dp.sort()
summary = {
    "images": ok,
    "of_candidates": len(files),
    "mean_abs_dp": sum(dp) / len(dp),
    "p95_abs_dp": dp[int(0.95 * (len(dp) - 1))],
    "max_abs_dp": dp[-1],
    "finding_changes": finding_changes,
    "box_count_changes": dbox,
    "timing_total_ms_median": {
        "model_scale": sorted(r["timing_ms"]["total"] for r in reduced)[len(reduced) // 2],
        "full": sorted(r["timing_ms"]["total"] for r in full)[len(full) // 2],
    },
    "timing_decode_ms_median": {
        "model_scale": sorted(r["timing_ms"]["decode"] for r in reduced)[len(reduced) // 2],
        "full": sorted(r["timing_ms"]["decode"] for r in full)[len(full) // 2],
    },
}
print(json.dumps(summary, indent=2))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
