# Two commands set everything up on a fresh machine (only Python needed):
#   make demo   create .venv, install mobilenet with what the demo needs (torch + plotting), run the main job
#   make test   create .venv, install the test extras too, run the test suite (make test-fast: without the slow tests)
# Each install step says what it installs, and pip shows its progress (downloads, then the list installed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The pinned CPU wheel; on another machine `make TORCH=torch demo` takes whatever torch pip finds.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# timm's model code for the timm parity test (tests/timm_reference.py), kept out of the venv's site-packages:
# timm needs torchvision, whose wheels would replace the CPU torch, so a pip-installed timm would be a package
# `import timm` cannot load. benchmarks/timm_peer.py finds this copy and runs it with stand-ins for torchvision.
TIMM_REFERENCE := $(VENV)/timm-reference

.PHONY: install install-test demo test test-fast lint clean gpu-suite

$(BIN)/python:
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# What `mobilenet demo` needs: torch, numpy, Pillow, safetensors, tqdm, and matplotlib for its curves.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "==> [1/2] installing $(TORCH) (the CPU wheel: a 190 MB download, 750 MB installed)"
	$(PIP) install --progress-bar on "$(TORCH)" || $(PIP) install --progress-bar on "torch>=2.4"
	@echo "==> [2/2] installing mobilenet (editable) with numpy, pillow, safetensors, tqdm and matplotlib (extra: plot)"
	$(PIP) install --progress-bar on -e ".[plot]"
	@touch $@

# Everything the test suite exercises: the [dev] extras (pytest, ruff; onnx/onnxruntime, ExecuTorch, OpenVINO,
# Core ML for the export targets; keras/h5py and ai-edge-litert for the parity tests; simplejpeg, pycocotools,
# PyAV, starlette/uvicorn, selenium, huggingface_hub), the TF Lite exporter (litert-torch) in a step of its own
# (see the comment on [tflite] in pyproject.toml), timm's model code for the timm parity test, and Triton for the
# GPU kernels' tests, which run in Triton's CPU interpreter (3.9's interpreter works with numpy 2.4; CUDA builds
# of torch bring their own).
$(VENV)/.installed-test: $(VENV)/.installed
	@echo "==> [1/4] installing the test extras [dev]: pytest, ruff, onnx, onnxruntime, executorch, openvino, coremltools, keras, h5py, ai-edge-litert, simplejpeg, pycocotools, av, starlette, uvicorn, selenium, huggingface_hub"
	$(PIP) install --progress-bar on -e ".[dev]"
	@echo "==> [2/4] installing the TF Lite exporter [tflite]: litert-torch"
	$(PIP) install --progress-bar on -e ".[tflite]"
	@echo "==> [3/4] installing timm 1.0.31's model code into $(TIMM_REFERENCE) (the timm parity test only)"
	$(PIP) install -q --no-deps --target "$(TIMM_REFERENCE)" "timm==1.0.31"
	@echo "==> [4/4] installing triton 3.9.0 (the kernel tests run in its CPU interpreter)"
	$(PIP) install --progress-bar on "triton==3.9.0"
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/mobilenet demo

test: install-test
	$(BIN)/python -m pytest -q

# The edit loop's tier: every test but those marked slow (`make test`, and CI, run them all).
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

# Every GPU measurement in one call (benchmarks/gpu_suite.py); on a machine without a GPU add ARGS=--dry-run.
gpu-suite:
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_suite.py $(ARGS)

lint: install-test
	$(BIN)/ruff check mobilenet tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
