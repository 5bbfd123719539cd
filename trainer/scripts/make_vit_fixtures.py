#!/usr/bin/env python3
"""Tiny random-weight ViT and DINOv2 models built by the reference implementation
(Hugging Face `transformers`), saved in the published safetensors layout with an input and
the reference outputs, for fv-train's parity tests.

    pip install torch transformers safetensors
    python3 trainer/scripts/make_vit_fixtures.py

Writes trainer/tests/fixtures/{vit_tiny,dinov2_tiny}/model.safetensors (as `save_pretrained`
writes them: the layout of google/vit-base-patch16-224 and facebook/dinov2-*) and io.safetensors
beside each (input and outputs). CI needs no Python.
"""
import os

import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def vit():
    torch.manual_seed(1)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    image_size=32, patch_size=8, num_labels=2, attn_implementation="eager")
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # not the init's zeros and ones: every tensor must matter
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    d = os.path.join(OUT, "vit_tiny")
    model.save_pretrained(d, safe_serialization=True)
    save_file({"input": x, "logits": logits}, os.path.join(d, "io.safetensors"))


def dinov2():
    torch.manual_seed(2)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                       image_size=28, patch_size=14, attn_implementation="eager")
    model = Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        h = model(pixel_values=x).last_hidden_state
    pooled = torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1)  # DINOv2's linear-probe input
    d = os.path.join(OUT, "dinov2_tiny")
    model.save_pretrained(d, safe_serialization=True)
    save_file({"input": x, "pooled": pooled}, os.path.join(d, "io.safetensors"))


if __name__ == "__main__":
    vit()
    dinov2()
    print("wrote", OUT)
