"""The typed record that travels with weights (mobilenet.weights), and old files written before it existed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import mobilenet
from mobilenet.checkpoint import read_metadata, save
from mobilenet.deploy.quantize import recorded_grids
from mobilenet.detection.ssd import SSD, SSDConfig
from mobilenet.preprocessing import Preprocessing
from mobilenet.tflite.fidelity import recorded_activation_grids
from mobilenet.tflite.grid import ActivationGrid
from mobilenet.weights import Quantization, Source, WeightGrid, WeightsInfo, weights_info

UNITS = ["stem"] + [f"blocks.{i}.{p}" for i in range(13) for p in ("dw", "pw")]
RELU6 = {"scale": 0.023529411764705882, "zero_point": 0, "quant_min": 0, "quant_max": 255, "accumulator_scale": []}


def _old_classifier_header(model: mobilenet.MobileNetV1) -> dict:
    """The header of a quantized TF Lite classifier import exactly as the code before WeightsInfo wrote it
    (mobilenet.convert.convert at 1217b76: class names and preprocessing at the top, everything else in extra)."""
    return {
        "architecture": "mobilenet_v1", "config": model.config.to_dict(), "format_version": 1,
        "class_names": ["background", "a", "b"],
        "preprocessing": Preprocessing(resolution=32, crop_mode="crop_resize", mean=(128.0,) * 3,
                                       std=(128.0,) * 3).to_dict(),
        "extra": {
            "source": "tiny_quant.tflite", "format": "tflite", "drop_background": False,
            "quantized": True, "input_dtype": "uint8",
            "activation_ranges": {"input": [-1.0, 0.9921875], **{u: [0.0, 6.0] for u in UNITS},
                                  "classifier": [-8.0, 8.0]},
            "activation_grids": {"input": {"scale": 0.0078125, "zero_point": 128, "quant_min": 0, "quant_max": 255,
                                           "accumulator_scale": []},
                                 "stem": {**RELU6, "accumulator_scale": [0.0001, 0.0002]}},
            "weight_quantization": {"stem.conv.weight": {"scale": [0.01] * 8, "zero_point": [128] * 8,
                                                         "quant_min": 0, "quant_max": 255, "axis": 0}},
            "class_labels": ["background", "apple", "banana"],
            "note": "a key this version does not know",
        },
    }


def _write_old(model: torch.nn.Module, header: dict, path) -> None:
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"mobilenet": json.dumps(header)})


def test_an_old_classifier_file_loads_into_the_typed_record(tmp_path):
    model = mobilenet.MobileNetV1(width_mult=0.25, resolution=32, num_classes=3, preset="tf")
    header = _old_classifier_header(model)
    _write_old(model, header, tmp_path / "old.safetensors")
    info = mobilenet.load(tmp_path / "old.safetensors").weights_info
    assert info.classes == ["background", "a", "b"] and info.class_labels[2] == "banana"
    assert info.preprocessing == Preprocessing.from_dict(header["preprocessing"])
    assert info.source == Source(format="tflite", file="tiny_quant.tflite",
                                 details={"drop_background": False, "quantized": True, "input_dtype": "uint8"})
    q = info.quantization
    assert q.activations["stem"] == ActivationGrid(scale=6 / 255, zero_point=0, accumulator_scale=(1e-4, 2e-4))
    assert q.weights["stem.conv.weight"] == WeightGrid(scale=(0.01,) * 8, zero_point=(128,) * 8, quant_min=0,
                                                       quant_max=255)
    assert info.training is None and info.extra == {"note": "a key this version does not know"}
    # what the readers of the record make of it: the recorded ranges as written, the exact grids win
    loaded = mobilenet.load(tmp_path / "old.safetensors")
    ranges, grids = recorded_grids(loaded)
    assert ranges["input"] == (-1.0, 0.9921875) and ranges["classifier"] == (-8.0, 8.0) and len(ranges) == 29
    assert grids == header["extra"]["weight_quantization"]
    fidelity = recorded_activation_grids(loaded)
    assert fidelity["stem"].accumulator_scale == (1e-4, 2e-4) and fidelity["blocks.0.dw"] == ActivationGrid.from_range(
        0.0, 6.0)


def test_saving_an_old_files_record_again_writes_the_same_header(tmp_path):
    model = mobilenet.MobileNetV1(width_mult=0.25, resolution=32, num_classes=3, preset="tf")
    header = _old_classifier_header(model)
    _write_old(model, header, tmp_path / "old.safetensors")
    loaded = mobilenet.load(tmp_path / "old.safetensors")
    again = read_metadata(save(loaded, tmp_path / "again.safetensors", info=loaded.weights_info))
    assert again == json.loads(json.dumps(header))


def test_an_old_detector_file_loads(tmp_path):
    ssd = SSD(SSDConfig(num_classes=2, width_mult=0.25, image_size=(64, 64)))
    extra = {"source": "/data/detect.tflite", "format": "tflite",
             "postprocess_op": {"max_detections": 10, "use_regular_nms": False},
             "activation_grids": {"input": {**RELU6, "zero_point": 128}, "box_heads.0": RELU6,
                                  "box_encodings": RELU6},
             "activation_ranges": {"input": [-3.0, 3.0], "box_heads.0": [0.0, 6.0]}}
    _write_old(ssd, {**ssd.to_metadata(), "format_version": 1, "class_names": ["cat", "dog"], "preprocessing": None,
                     "extra": extra}, tmp_path / "ssd.safetensors")
    info = mobilenet.load(tmp_path / "ssd.safetensors").weights_info
    assert info.classes == ["cat", "dog"] and info.preprocessing is None
    assert info.source.details == {"postprocess_op": {"max_detections": 10, "use_regular_nms": False}}
    assert set(info.quantization.activations) == {"input", "box_heads.0", "box_encodings"}
    assert info.quantization.activation_ranges() == {"input": (-3.0, 3.0), "box_heads.0": (0.0, 6.0)}


def test_ranges_are_derived_from_the_grids_when_not_recorded():
    # a new import records each grid once: the ranges `mobilenet quantize` reads are the grids' whole uint8 range,
    # for the input and module outputs only (not the pool or the SSD's concatenations)
    grid = ActivationGrid.from_tflite(0.05, 121, activation="RELU6")
    q = Quantization(activations={"input": ActivationGrid(scale=1 / 128, zero_point=128), "extras.0.conv": grid,
                                  "pool": grid, "box_encodings": grid, "class_scores": grid})
    assert q.activation_ranges() == {"input": (-1.0, 127 / 128), "extras.0.conv": (-121 * 0.05, 134 * 0.05)}
    assert "activation_ranges" not in q.to_extra()


def test_training_record_and_an_empty_record(tmp_path):
    info = WeightsInfo.from_header({"class_names": None, "extra": {"train_config": {"lr": 0.1}, "epoch": 3,
                                                                   "metrics": {"val_top1": 50.0}}})
    assert info.training.config == {"lr": 0.1} and info.training.epoch == 3 and info.extra == {}
    # without a train_config (a detector's best file) epoch stays an unknown key, kept as it was
    assert WeightsInfo.from_header({"extra": {"epoch": 2, "voc": 0.5}}).extra == {"epoch": 2, "voc": 0.5}
    assert WeightsInfo.from_header({}) == WeightsInfo() == weights_info(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="one zero point per scale"):
        WeightGrid(scale=(1.0, 2.0), zero_point=(0,), quant_min=0, quant_max=255)
