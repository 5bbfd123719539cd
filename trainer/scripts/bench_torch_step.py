#!/usr/bin/env python3
"""PyTorch's side of the trainer benchmark: images per second of one EfficientNet-Lite0
training step (forward, cross-entropy, backward, AdamW) on the CPU, the same architecture,
batch, resolution and thread count as `fv-train bench-step`.

    pip install torch efficientnet-lite-pytorch
    python3 trainer/scripts/bench_torch_step.py --batch 16 --image-size 224 --threads 2

Prints one JSON object. The reference implementation is the one fv-train's parity test
checks its EfficientNet-Lite0 against.
"""
import argparse
import json
import time

import torch
from efficientnet_lite_pytorch import EfficientNet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size)
    y = torch.randint(0, 2, (a.batch,))
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "model": "efficientnet-lite0",
        "batch": a.batch,
        "image_size": a.image_size,
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "median_step_ms": median * 1e3,
        "images_per_second": a.batch / median,
    }))


if __name__ == "__main__":
    main()
