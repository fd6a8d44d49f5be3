"""Named variants and create_model."""

from __future__ import annotations

import pytest

from mobilenet import create_model, list_models
from mobilenet.zoo import variant_name


def test_the_grid() -> None:
    names = list_models()
    assert len(names) == 16
    assert names[0] == "mobilenet_v1_100_224" and names[-1] == "mobilenet_v1_025_128"
    assert list_models("*_160") == ["mobilenet_v1_100_160", "mobilenet_v1_075_160", "mobilenet_v1_050_160",
                                    "mobilenet_v1_025_160"]
    assert variant_name(0.75, 192) == "mobilenet_v1_075_192"


def test_create_model_with_overrides() -> None:
    model = create_model("mobilenet_v1_075_160", num_classes=10, preset="tf")
    cfg = model.config
    assert (cfg.width_mult, cfg.resolution, cfg.num_classes, cfg.preset) == (0.75, 160, 10, "tf")


@pytest.mark.parametrize(("name", "hint"), [
    ("mobilenet_v1_100_225", "closest: mobilenet_v1_100_224"),
    ("mobilenetv1_100", "did you mean"),
    ("resnet50", "known: mobilenet_v1_100_224"),
])
def test_unknown_name(name: str, hint: str) -> None:
    with pytest.raises(ValueError, match=f"unknown model '{name}'") as e:
        create_model(name)
    assert hint in str(e.value)
