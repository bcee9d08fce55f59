# prunekit: `make demo` and `make test` are all a new machine needs (they create .venv and install).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: install demo test test-slow test-all bench bench-structured bench-budget bench-reduce bench-ignore bench-sparse bench-latency bench-deploy bench-scaling bench-calibration-memory bench-transformer bench-transformers fortunes fashion-mnist clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# torchvision's model files for tests/tv, outside site-packages: its compiled ops do not load against this
	# torch build, and an importable-but-broken torchvision breaks transformers' imports
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/torchvision-src torchvision==0.28.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/prunekit demo

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q -m ""

fashion-mnist:
	@test -f $(FMNIST)/train-images-idx3-ubyte.gz || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

bench-structured: install
	$(BIN)/python benchmarks/bench_structured.py

bench-budget: install fashion-mnist
	$(BIN)/python benchmarks/bench_budget.py

bench-reduce: install fashion-mnist
	$(BIN)/python benchmarks/bench_reduce.py

bench-ignore: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_ignore.py

bench-latency: install fashion-mnist
	$(BIN)/pip install -q -r requirements-bench.txt
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_latency.py

bench-sparse: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_sparse.py --threads 1

bench-deploy: install fashion-mnist
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_deploy.py

bench-scaling: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_scaling.py

bench-calibration-memory: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/bench_calibration_memory.py

fortunes:
	@test -d /usr/share/games/fortunes || (apt-get update -qq && apt-get install -y -qq fortunes)

bench-transformer: install fortunes
	$(BIN)/pip install -q -r requirements-bench.txt
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_transformer.py

bench-transformers: install fortunes
	$(BIN)/pip install -q -r requirements-bench.txt
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_transformers.py

bench: bench-structured bench-budget bench-reduce bench-ignore bench-sparse bench-latency bench-deploy bench-scaling bench-calibration-memory bench-transformer bench-transformers

clean:
	rm -rf runs .pytest_cache
