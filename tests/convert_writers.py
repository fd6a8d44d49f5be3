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
    for scope, (w, bn) in zip(scopes, units_of(model), strict=True):
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


# ---- Caffe ----------------------------------------------------------------------------------------
def _caffe_blob(arr: np.ndarray) -> bytes:
    shape = pb_bytes(1, b"".join(varint(d) for d in arr.shape))  # BlobShape.dim, packed
    return pb_bytes(7, shape) + pb_packed_floats(5, arr.reshape(-1))


def _caffe_layer(name: str, kind: str, blobs: list[np.ndarray], extra: bytes = b"") -> bytes:
    body = pb_bytes(1, name.encode()) + pb_bytes(2, kind.encode())
    body += b"".join(pb_bytes(7, _caffe_blob(b)) for b in blobs) + extra
    return pb_bytes(100, body)


def caffe_names() -> list[str]:
    """shicai/MobileNet-Caffe's conv names: conv1, conv2_1/dw, conv2_1/sep, ..., conv6/dw, conv6/sep."""
    blocks = ["2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "5_1", "5_2", "5_3", "5_4", "5_5", "5_6", "6"]
    return ["conv1"] + [f"conv{b}/{k}" for b in blocks for k in ("dw", "sep")]


def write_caffe(model: MobileNetV1, path: str | Path, *, factor: float = 2.0, eps: float = 1e-5) -> tuple[Path, Path]:
    """A ``.caffemodel`` (+ deploy ``.prototxt``) in shicai's layout for a paper-preset model."""
    from mobilenet.model import LAYERS

    strides = [2] + [s for _, st in LAYERS for s in (st, 1)]
    net, proto = pb_bytes(1, b"MobileNet"), ['name: "MobileNet"', 'input: "data"']
    for name, (w, bn), stride in zip(caffe_names(), units_of(model), strides, strict=True):
        group = w.shape[0] if name.endswith("/dw") else 1
        conv_param = pb_bytes(106, pb_varint(1, w.shape[0]) + pb_varint(2, 0) + pb_varint(6, stride) +
                              pb_varint(5, group))
        net += _caffe_layer(name, "Convolution", [w.numpy()], conv_param)
        stats = [bn.running_mean.numpy() * factor, bn.running_var.numpy() * factor, np.array([factor], np.float32)]
        eps_param = pb_bytes(139, varint(3 << 3 | 5) + struct.pack("<f", eps))
        net += _caffe_layer(f"{name}/bn", "BatchNorm", stats, eps_param)
        net += _caffe_layer(f"{name}/scale", "Scale", [bn.weight.detach().numpy(), bn.bias.detach().numpy()])
        net += _caffe_layer(f"relu{name}", "ReLU", [])
        proto.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "x" top: "x"\n'
                     f'  convolution_param {{ num_output: {w.shape[0]} stride: {stride} group: {group} }} }}')
        proto.append(f'layer {{ name: "{name}/bn" type: "BatchNorm" batch_norm_param {{ eps: {eps} }} }}')
    net += _caffe_layer("pool6", "Pooling", [])
    if isinstance(model.classifier, torch.nn.Linear):
        w = model.classifier.weight.detach().numpy()
        net += _caffe_layer("fc7", "Convolution", [w[:, :, None, None], model.classifier.bias.detach().numpy()])
        proto.append('layer { name: "fc7" type: "Convolution" # the classifier\n}')
    path = Path(path)
    path.write_bytes(net)
    deploy = path.with_suffix(".prototxt")
    deploy.write_text("\n".join(proto) + "\n")
    return path, deploy


# ---- timm / Hugging Face state dicts ----------------------------------------------------------
def timm_state(model: MobileNetV1) -> dict[str, torch.Tensor]:
    """timm ``mobilenetv1_100`` keys for our model's tensors (stages of 1, 2, 2, 6, 2 blocks)."""
    out: dict[str, torch.Tensor] = {}

    def bn(prefix: str, m: torch.nn.BatchNorm2d) -> None:
        out.update({f"{prefix}.weight": m.weight.detach(), f"{prefix}.bias": m.bias.detach(),
                    f"{prefix}.running_mean": m.running_mean, f"{prefix}.running_var": m.running_var,
                    f"{prefix}.num_batches_tracked": torch.tensor(0)})

    out["conv_stem.weight"] = model.stem.conv.weight.detach()
    bn("bn1", model.stem.bn)
    k = 0
    for stage, n in enumerate((1, 2, 2, 6, 2)):
        for i in range(n):
            b, p = model.blocks[k], f"blocks.{stage}.{i}"
            out[f"{p}.conv_dw.weight"] = b.dw.conv.weight.detach()
            bn(f"{p}.bn1", b.dw.bn)
            out[f"{p}.conv_pw.weight"] = b.pw.conv.weight.detach()
            bn(f"{p}.bn2", b.pw.bn)
            k += 1
    out["classifier.weight"] = model.classifier.weight.detach().reshape(model.num_classes, -1)
    out["classifier.bias"] = model.classifier.bias.detach()
    return {k: v.clone().contiguous() for k, v in out.items()}


def hf_state(model: MobileNetV1) -> dict[str, torch.Tensor]:
    """Hugging Face ``MobileNetV1ForImageClassification`` keys for a tf-preset model's tensors."""
    out: dict[str, torch.Tensor] = {}
    seqs = [("mobilenet_v1.conv_stem", model.stem)] + [
        (f"mobilenet_v1.layer.{j}", s) for j, s in enumerate(s for b in model.blocks for s in (b.dw, b.pw))]
    for p, s in seqs:
        out[f"{p}.convolution.weight"] = s.conv.weight.detach()
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}.normalization.{name}"] = getattr(s.bn, name).detach()
    out["classifier.weight"] = model.classifier.weight.detach().reshape(model.num_classes, -1)
    out["classifier.bias"] = model.classifier.bias.detach()
    return {k: v.clone().contiguous() for k, v in out.items()}


# ---- TF Lite flatbuffers ------------------------------------------------------------------------
class FlatBufferWriter:
    """A minimal forward-only FlatBuffers writer: a table is a list of fields (None = absent), each
    ``(kind, value)`` with kind in i8/u8/bool/i32/u32/f32/i64 (scalars), str, table, tables, and vectors
    ``[i32]``/``[f32]``/``[i64]``/``[u8]``. Children are written after their parent (uoffsets point forward)."""

    SCALARS = {"i8": ("<b", 4), "u8": ("<B", 4), "bool": ("<?", 4), "i32": ("<i", 4), "u32": ("<I", 4),
               "f32": ("<f", 4), "i64": ("<q", 8), "u64": ("<Q", 8)}
    VECTORS = {"[i32]": "<i", "[f32]": "<f", "[i64]": "<q", "[u8]": "<B"}

    def __init__(self, identifier: bytes) -> None:
        self.buf = bytearray(b"\0\0\0\0" + identifier)

    def _align(self, n: int) -> None:
        self.buf += b"\0" * (-len(self.buf) % n)

    def finish(self, root: list) -> bytes:
        pos = self._table(root)
        struct.pack_into("<I", self.buf, 0, pos)
        return bytes(self.buf)

    def _table(self, fields: list) -> int:
        slots, size = [], 4  # the soffset to the vtable comes first
        for f in fields:
            if f is None:
                slots.append(0)
                continue
            width = self.SCALARS[f[0]][1] if f[0] in self.SCALARS else 4
            size += -size % width
            slots.append(size)
            size += width
        self._align(2)
        vt = len(self.buf)
        self.buf += struct.pack(f"<HH{len(slots)}H", 4 + 2 * len(slots), size, *slots)
        self._align(8)
        table = len(self.buf)
        self.buf += b"\0" * size
        struct.pack_into("<i", self.buf, table, table - vt)
        for f, off in zip(fields, slots, strict=True):
            if f is None:
                continue
            kind, value = f
            pos = table + off
            if kind in self.SCALARS:
                struct.pack_into(self.SCALARS[kind][0], self.buf, pos, value)
            else:
                struct.pack_into("<I", self.buf, pos, self._child(kind, value) - pos)
        return table

    def _child(self, kind: str, value) -> int:
        if kind == "table":
            return self._table(value)
        self._align(8)
        start = len(self.buf)
        if kind == "str":
            data = value.encode()
            self.buf += struct.pack("<I", len(data)) + data + b"\0"
        elif kind in self.VECTORS:
            fmt = self.VECTORS[kind]
            data = bytes(value) if kind == "[u8]" else struct.pack(f"<{len(value)}{fmt[-1]}", *value)
            self.buf += struct.pack("<I", len(value)) + data
        elif kind == "tables":
            self.buf += struct.pack("<I", len(value)) + b"\0" * (4 * len(value))
            for i, t in enumerate(value):
                slot = start + 4 + 4 * i
                struct.pack_into("<I", self.buf, slot, self._table(t) - slot)
        else:
            raise ValueError(kind)
        return start


def fold_bn(seq: torch.nn.Sequential) -> tuple[np.ndarray, np.ndarray]:
    """(OIHW kernel, bias) of conv -> BN folded as TF Lite does."""
    bn = seq.bn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w = seq.conv.weight.detach() * scale.view(-1, 1, 1, 1)
    return w.numpy().copy(), (bn.bias.detach() - bn.running_mean * scale).numpy().copy()


def write_tflite(model: MobileNetV1, path: str | Path, *, quantize_stem: bool = False) -> Path:
    """A float TF Lite classifier of a tf-preset model, BN folded and ReLU6 fused as the converter does.

    ``quantize_stem``: store the stem kernel as uint8 with per-output-channel scales and zero points.
    """
    res = model.config.resolution
    tensors: list[list] = []
    buffers: list[list] = [[None]]  # buffer 0 is the empty sentinel

    def tensor(name, shape, data=None, quant=None, dtype=0):
        buf = 0
        if data is not None:
            buffers.append([("[u8]", np.ascontiguousarray(data).tobytes())])
            buf = len(buffers) - 1
        tensors.append([("[i32]", list(shape)), ("i8", dtype), ("u32", buf), ("str", name),
                        ("table", quant) if quant else None])
        return len(tensors) - 1

    codes = ["CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX"]
    builtin = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "AVERAGE_POOL_2D": 1, "RESHAPE": 22, "SOFTMAX": 25}
    ops = []

    def op(kind, inputs, outputs, opt_type=0, options=None):
        ops.append([("u32", codes.index(kind)), ("[i32]", inputs), ("[i32]", outputs),
                    ("u8", opt_type) if opt_type else None, ("table", options) if options else None])

    x = tensor("input", (1, res, res, 3))
    size = res
    seqs = [model.stem] + [s for b in model.blocks for s in (b.dw, b.pw)]
    for i, seq in enumerate(seqs):
        w, b = fold_bn(seq)
        stride = seq.conv.stride[0]
        size = -(-size // stride)
        dw = seq.conv.groups > 1
        if dw:
            wt = tensor(f"u{i}/depthwise", (1, 3, 3, w.shape[0]), w[:, 0].transpose(1, 2, 0)[None].astype("<f4"))
        elif i == 0 and quantize_stem:
            lo, hi = w.reshape(w.shape[0], -1).min(1), w.reshape(w.shape[0], -1).max(1)
            scale = ((hi - lo) / 255).astype(np.float32)
            zp = np.round(-lo / scale).astype(np.int64)
            q = np.round(w.transpose(0, 2, 3, 1) / scale.reshape(-1, 1, 1, 1)) + zp.reshape(-1, 1, 1, 1)
            q = np.clip(q, 0, 255)
            quant = [None, None, ("[f32]", scale.tolist()), ("[i64]", zp.tolist()), None, None, ("i32", 0)]
            wt = tensor("u0/weights_quant", (w.shape[0], 3, 3, 3), q.astype(np.uint8), quant, dtype=3)
        else:
            wt = tensor(f"u{i}/weights", w.transpose(0, 2, 3, 1).shape, w.transpose(0, 2, 3, 1).astype("<f4"))
        bt = tensor(f"u{i}/bias", b.shape, b.astype("<f4"))
        y = tensor(f"u{i}/Relu6", (1, size, size, w.shape[0]))
        if dw:
            op("DEPTHWISE_CONV_2D", [x, wt, bt], [y], 2,
               [("i8", 0), ("i32", stride), ("i32", stride), ("i32", 1), ("i8", 3)])
        else:
            op("CONV_2D", [x, wt, bt], [y], 1, [("i8", 0), ("i32", stride), ("i32", stride), ("i8", 3)])
        x = y
    c = seqs[-1].conv.out_channels
    pooled = tensor("AvgPool", (1, 1, 1, c))
    op("AVERAGE_POOL_2D", [x], [pooled], 5, [("i8", 1), ("i32", 2), ("i32", 2), ("i32", size), ("i32", size),
                                             ("i8", 0)])
    n = model.num_classes
    cw = model.classifier.weight.detach().numpy().reshape(n, c)
    lw = tensor("Logits/weights", (n, 1, 1, c), cw.reshape(n, 1, 1, c).astype("<f4"))
    lb = tensor("Logits/biases", (n,), model.classifier.bias.detach().numpy().astype("<f4"))
    logits4 = tensor("Logits/BiasAdd", (1, 1, 1, n))
    op("CONV_2D", [pooled, lw, lb], [logits4], 1, [("i8", 0), ("i32", 1), ("i32", 1), ("i8", 0)])
    shape = tensor("Logits/shape", (2,), np.array([1, n], "<i4"), dtype=2)
    logits = tensor("Logits/SpatialSqueeze", (1, n))
    op("RESHAPE", [logits4, shape], [logits], 17, [("[i32]", [1, n])])
    probs = tensor("Predictions", (1, n))
    op("SOFTMAX", [logits], [probs], 9, [("f32", 1.0)])
    subgraph = [("tables", tensors), ("[i32]", [0]), ("[i32]", [probs]), ("tables", ops), ("str", "main")]
    opcodes = [[("i8", min(builtin[k], 127)), None, ("i32", 1), ("i32", builtin[k])] for k in codes]
    root = [("u32", 3), ("tables", opcodes), ("tables", [subgraph]), ("str", "written by tests"),
            ("tables", buffers)]
    path = Path(path)
    path.write_bytes(FlatBufferWriter(b"TFL3").finish(root))
    return path
