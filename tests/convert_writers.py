"""Tiny writers of foreign weight formats for the importer tests (TF checkpoint, Caffe, TF variable names).

They write the formats from their public specs so round trips test the readers without TensorFlow/Caffe.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from mobilenet.model import MobileNetV1


def randomize_bn(model: MobileNetV1, seed: int = 0) -> MobileNetV1:
    """Give every BatchNorm non-trivial statistics so a wrong mapping shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.1
            m.running_mean = torch.randn(c, generator=g) * 0.1
            m.running_var = torch.rand(c, generator=g) + 0.5
    if isinstance(model.classifier, (torch.nn.Conv2d, torch.nn.Linear)):
        model.classifier.bias.data = torch.randn(model.classifier.bias.shape, generator=g) * 0.1
    return model.eval()


def units_of(model: MobileNetV1) -> list[tuple[torch.Tensor, torch.nn.BatchNorm2d]]:
    """(OIHW kernel, BN) of each conv in execution order."""
    seqs = [model.stem] + [s for b in model.blocks for s in (b.dw, b.pw)]
    return [(s.conv.weight.detach(), s.bn) for s in seqs]


def to_hwio(w: torch.Tensor, depthwise: bool) -> np.ndarray:
    if depthwise:  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return w[:, 0].permute(1, 2, 0).unsqueeze(-1).numpy().copy()
    return w.permute(2, 3, 1, 0).numpy().copy()  # (O, I, kh, kw) -> (kh, kw, I, O)


def slim_variables(model: MobileNetV1) -> dict[str, np.ndarray]:
    """The TF-slim variable dict of a tf-preset model (the inverse of the slim importer's mapping)."""
    out: dict[str, np.ndarray] = {}
    scopes = ["Conv2d_0"] + [f"Conv2d_{i}_{k}" for i in range(1, 14) for k in ("depthwise", "pointwise")]
    for scope, (w, bn) in zip(scopes, units_of(model)):
        dw = scope.endswith("depthwise")
        out[f"MobilenetV1/{scope}/{'depthwise_weights' if dw else 'weights'}"] = to_hwio(w, dw)
        for name, t in (("gamma", bn.weight), ("beta", bn.bias), ("moving_mean", bn.running_mean),
                        ("moving_variance", bn.running_var)):
            out[f"MobilenetV1/{scope}/BatchNorm/{name}"] = t.detach().numpy().copy()
    if isinstance(model.classifier, torch.nn.Conv2d):
        out["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = to_hwio(model.classifier.weight.detach(), False)
        out["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = model.classifier.bias.detach().numpy().copy()
    out["global_step"] = np.array(1000, dtype=np.int64)
    return out


# ---- protobuf and SSTable encoding --------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def pb_bytes(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def pb_packed_floats(field: int, values: np.ndarray) -> bytes:
    return pb_bytes(field, np.asarray(values, "<f4").tobytes())


_TF_DTYPES = {np.dtype("float32"): 1, np.dtype("int64"): 9, np.dtype("int32"): 3}


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)  # one restart point at offset 0


def write_tf_checkpoint(prefix: str | Path, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``prefix.index`` + ``prefix.data-00000-of-00001`` (TF's V2 tensor-bundle layout)."""
    prefix = Path(prefix)
    data, entries = bytearray(), [(b"", pb_varint(1, 1))]  # BundleHeaderProto: num_shards = 1
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(pb_bytes(2, pb_varint(1, d)) for d in arr.shape)
        entry = pb_varint(1, _TF_DTYPES[arr.dtype]) + pb_bytes(2, shape) + pb_varint(4, len(data)) + \
            pb_varint(5, len(raw))
        entries.append((name.encode(), entry))
        data += raw
    out = bytearray()
    block = _block(entries)
    out += block + b"\0" + b"\0\0\0\0"  # uncompressed + (unchecked) crc
    meta_off = len(out)
    meta = _block([])
    out += meta + b"\0\0\0\0\0"
    index_off = len(out)
    index = _block([(entries[-1][0], varint(0) + varint(len(block)))])
    out += index + b"\0\0\0\0\0"
    handles = varint(meta_off) + varint(len(meta)) + varint(index_off) + varint(len(index))
    out += handles.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(bytes(out))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    return prefix
