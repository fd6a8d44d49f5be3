"""The TF Lite flatbuffer reader: real files (skip without ../shared/data) and corrupt inputs."""

from __future__ import annotations

import numpy as np
import pytest

from mobilenet.tflite.flexbuffers import FlexBufferError, decode_flexbuffer
from mobilenet.tflite.format import TFLiteFormatError, parse_tflite, read_tflite
from tests.conftest import shared_file


def test_reads_the_quantized_classifier():
    m = read_tflite(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))
    assert m.opcode_counts() == {"CONV_2D": 15, "DEPTHWISE_CONV_2D": 13, "AVERAGE_POOL_2D": 1, "RESHAPE": 1,
                                 "SOFTMAX": 1}
    (inp,) = m.inputs
    assert (inp.shape, inp.dtype) == ((1, 128, 128, 3), "uint8")
    assert inp.scale.tolist() == [1 / 128] and inp.zero_point.tolist() == [128]
    assert m.outputs[0].shape == (1, 1001)
    first = m.operators[0]
    assert first.opcode == "CONV_2D"
    assert first.options["stride_h"] == 2 and first.options["padding"] == "SAME"
    assert first.options["fused_activation_function"] == "RELU6"
    w = m.tensors[first.inputs[1]]
    assert w.shape == (8, 3, 3, 3) and w.dtype == "uint8"  # OHWI, alpha 0.25 -> 8 stem channels
    q, f = w.numpy(), w.dequantize()
    np.testing.assert_allclose(f, (q.astype(np.float64) - w.zero_point[0]) * w.scale[0], rtol=1e-6)
    dw = next(op for op in m.operators if op.opcode == "DEPTHWISE_CONV_2D")
    assert m.tensors[dw.inputs[1]].shape == (1, 3, 3, 8)  # depthwise kernels are (1, H, W, C)


def test_reads_the_detector_custom_options():
    m = read_tflite(shared_file("weights", "tflite", "detect.tflite"))
    (post,) = [op for op in m.operators if op.opcode == "CUSTOM"]
    assert post.custom_code == "TFLite_Detection_PostProcess"
    opts = post.custom_options_dict()
    assert opts["num_classes"] == 90 and opts["max_detections"] == 10
    assert opts["y_scale"] == pytest.approx(10.0) and opts["h_scale"] == pytest.approx(5.0)
    assert m.tensor("anchors").dequantize().shape == (1917, 4)


@pytest.mark.parametrize("blob", [b"", b"\x00" * 7, b"\x10\x00\x00\x00XXXX" + b"\x00" * 16])
def test_rejects_non_tflite_bytes(blob):
    with pytest.raises(TFLiteFormatError, match="not a TF Lite model"):
        parse_tflite(blob, "x.tflite")


def test_rejects_a_truncated_file():
    blob = b"\xf0\xff\x00\x00TFL3" + b"\x00" * 8  # root offset points past the end
    with pytest.raises(TFLiteFormatError, match="outside|corrupt"):
        parse_tflite(blob, "x.tflite")


def test_read_tflite_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_tflite(tmp_path / "none.tflite")


def test_flexbuffer_scalar_roots_and_errors():
    # root int 7: value byte 0x07, packed type (INT << 2 | width 1 -> 0), root width 1
    assert decode_flexbuffer(bytes([7, 1 << 2, 1])) == 7
    assert decode_flexbuffer(bytes([1, 26 << 2, 1])) is True  # BOOL
    with pytest.raises(FlexBufferError):
        decode_flexbuffer(b"\x00")
    with pytest.raises(FlexBufferError, match="root width"):
        decode_flexbuffer(bytes([0, 0, 3]))
