#!/usr/bin/env python3
"""A tiny random-weight YOLOv8 built by the reference implementation (the PyPI `ultralytics`
package, from its own yolov8.yaml), converted as yolov8_to_safetensors.py converts published
checkpoints, with an input and the reference outputs, for fv-train's parity test.

    pip install ultralytics safetensors
    python3 trainer/scripts/make_yolov8_fixture.py

Writes trainer/tests/fixtures/yolov8_tiny/{model,io}.safetensors. CI needs no Python.

The scale is YOLOv8's depth (0.33) with width 0.0625 (channels 8..64), so the file stays
small while every layer type, the C2f shortcuts and the two-bottleneck stages are exercised.
"""
import os

import torch
import yaml
from safetensors.torch import save_file
from ultralytics.nn.tasks import DetectionModel

from yolov8_to_safetensors import state_dict_of

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "yolov8_tiny")


def main() -> None:
    import ultralytics

    cfg_path = os.path.join(os.path.dirname(ultralytics.__file__), "cfg", "models", "v8", "yolov8.yaml")
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    cfg["scales"] = {"t": [0.33, 0.0625, 1024]}
    cfg["scale"] = "t"
    cfg["nc"] = 1
    torch.manual_seed(3)
    model = DetectionModel(cfg, ch=3, nc=1, verbose=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "dfl" in name:
                continue  # the fixed bin indices
            p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():  # running statistics that matter
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        decoded, raw = model(x)
    # The training loss (v8DetectionLoss: task-aligned assigner, BCE, CIoU, DFL) on a batch of
    # two with boxes of several sizes, one thinner than a stride, evaluated on the eval-mode
    # outputs so that both sides see the same predictions.
    import types

    from ultralytics.utils.loss import v8DetectionLoss

    model.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    xb = torch.randn(2, 3, 64, 96)
    boxes_px = torch.tensor([[0, 10.0, 8.0, 50.0, 40.0], [0, 60.0, 30.0, 64.0, 60.0], [1, 20.0, 20.0, 44.0, 36.0]])
    with torch.no_grad():
        _, rawb = model(xb)
        wh = torch.tensor([96.0, 64.0, 96.0, 64.0])
        xyxy = boxes_px[:, 1:]
        xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / wh
        batch = {"batch_idx": boxes_px[:, 0], "cls": torch.zeros(3), "bboxes": xywh}
        _, parts = v8DetectionLoss(model)(rawb, batch)
    os.makedirs(OUT, exist_ok=True)
    save_file(state_dict_of(model), os.path.join(OUT, "model.safetensors"))
    save_file({"input": x, "boxes": raw["boxes"].contiguous(), "scores": raw["scores"].contiguous(),
               "decoded": decoded.contiguous(), "loss_input": xb, "loss_targets": boxes_px,
               "loss_parts": torch.stack([parts[k] for k in ("box_loss", "cls_loss", "dfl_loss")]).float().contiguous()}, os.path.join(OUT, "io.safetensors"))
    print("loss parts:", {k: float(v) for k, v in parts.items()})
    print("wrote", OUT, "decoded", tuple(decoded.shape), "ultralytics", ultralytics.__version__)


if __name__ == "__main__":
    main()
