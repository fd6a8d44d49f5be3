# Two commands set everything up on a fresh machine (only Python needed):
#   make demo   create .venv, install, run the main job on its bundled default data
#   make test   create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The pinned CPU wheel; on another machine `make TORCH=torch demo` takes whatever torch pip finds.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint clean gpu-suite

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# timm's model code for the timm parity test, without its dependencies: its torchvision requirement would pull a
# CUDA torch, and the test needs neither (tests/timm_reference.py). Triton for the GPU kernels' tests, which run
# them in Triton's CPU interpreter (3.9's interpreter works with numpy 2.4; CUDA builds of torch bring their own).
# The TF Lite exporter (litert-torch) in a step of its own: see the comment on [tflite] in pyproject.toml.
$(VENV)/.test-extras: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps "timm==1.0.31"
	$(BIN)/pip install -q "triton==3.9.0"
	$(BIN)/pip install -q -e ".[tflite]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mobilenet demo

test: $(VENV)/.test-extras
	$(BIN)/python -m pytest -q

# Every GPU measurement in one call (benchmarks/gpu_suite.py); on a machine without a GPU add ARGS=--dry-run.
gpu-suite:
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_suite.py $(ARGS)

lint: install
	$(BIN)/ruff check mobilenet tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
