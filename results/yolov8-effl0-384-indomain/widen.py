#!/usr/bin/env python3
"""Writes the f32 safetensors of a carried pack's f16 best checkpoint (best.safetensors.gz):
the shipped classifier's weights, the detector's in-domain starting backbone. Standard library
only. Usage: widen.py PACK/best.safetensors.gz OUT.safetensors"""
import gzip, json, struct, sys

src, dst = sys.argv[1], sys.argv[2]
b = gzip.open(src).read()
n = struct.unpack("<Q", b[:8])[0]
header, data = json.loads(b[8 : 8 + n]), b[8 + n :]
out, chunks, off = {}, [], 0
for name, t in header.items():
    if name == "__metadata__":
        out[name] = t
        continue
    start, end = t["data_offsets"]
    raw, dtype = data[start:end], t["dtype"]
    if dtype == "F16":
        count = (end - start) // 2
        raw, dtype = struct.pack(f"<{count}f", *struct.unpack(f"<{count}e", raw)), "F32"
    out[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [off, off + len(raw)]}
    chunks.append(raw)
    off += len(raw)
h = json.dumps(out).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
