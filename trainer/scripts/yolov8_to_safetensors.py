#!/usr/bin/env python3
"""Converts an Ultralytics YOLOv8 checkpoint (yolov8n.pt, yolov8s.pt, or one you trained) to
safetensors for `fv-train detect --weights`.

    pip install ultralytics safetensors
    python3 trainer/scripts/yolov8_to_safetensors.py yolov8n.pt yolov8n.safetensors

The tensor names stay Ultralytics' (`model.0.conv.weight`, ...); fv-train maps them. The
COCO head (80 classes) is kept in the file; `fv-train detect` starts a fresh one-class head
when the class count differs.
"""
import sys

import torch
from safetensors.torch import save_file


def state_dict_of(model: torch.nn.Module) -> dict:
    """Float32, contiguous, without BatchNorm's step counters (fv-train has no place for them)."""
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def main(src: str, dst: str) -> None:
    from ultralytics import YOLO

    model = YOLO(src).model
    head = model.model[-1]
    if type(head).__name__ != "Detect" or getattr(head, "reg_max", 16) != 16:
        sys.exit(f"{src}: not a YOLOv8 detection checkpoint (head {type(head).__name__})")
    save_file(state_dict_of(model), dst)
    print(f"wrote {dst}: {sum(p.numel() for p in model.parameters())} parameters, {head.nc} classes")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: yolov8_to_safetensors.py CHECKPOINT.pt OUT.safetensors")
    main(sys.argv[1], sys.argv[2])
