# mpirnn: `make demo` sets everything up and trains the embedded default; `make test` runs the tests.
# Launch settings live here once: override them on the command line, e.g. `make demo NP=2`.

PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
# Real UEA/UCR .ts files (JapaneseVowels ...) ship inside aeon's wheel: see mpirnn/data/bundled.py.
AEON    ?= aeon==1.6.0
NP      ?= 4
MPIEXEC ?= $(VENV)/bin/mpirun
PY      := $(VENV)/bin/python
# Seconds any one MPI test run may take before it is killed (no hang ever blocks CI).
MPI_TEST_TIMEOUT ?= 900

.PHONY: setup demo test lint test-unit test-mpi test-slurm bench clean

setup: $(VENV)/.installed $(VENV)/.example-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test,plots,export,tensorboard]'
	touch $@

# Only aeon's data files are used (never imported), so none of its dependencies are installed.
$(VENV)/.example-data: $(VENV)/.installed
	$(VENV)/bin/pip install -q --no-deps $(AEON)
	touch $@

demo: setup
	$(MPIEXEC) -n $(NP) $(PY) -m mpirnn.train

test: lint test-unit test-mpi test-slurm

# The layers import downward only and no files or packages import each other in a circle:
# the import-linter contracts of pyproject.toml (docs/design.md, "Layers"). First, as it takes seconds.
lint: setup
	$(VENV)/bin/lint-imports

test-unit: setup
	$(PY) -m pytest -q tests -m "not mpi and not slurm"

# Every MPI test file at 1, 2, 3 and 4 ranks, then the three-axis grids at 8 (4 and 8 are
# oversubscribed on small machines: fine for correctness).
test-mpi: setup
	@for n in 1 2 3 4; do \
	  echo "== MPI tests at -n $$n"; \
	  timeout -k 10 $(MPI_TEST_TIMEOUT) $(MPIEXEC) -n $$n $(PY) -m pytest -q --with-mpi -m mpi tests/mpi \
	    || { echo "MPI tests failed at -n $$n"; exit 1; }; \
	done
	@echo "== MPI tests at -n 8 (dp x sp x tp, sp x pp x tp)"
	@timeout -k 10 $(MPI_TEST_TIMEOUT) $(MPIEXEC) -n 8 $(PY) -m pytest -q --with-mpi -m mpi tests/mpi8 \
	  || { echo "MPI tests failed at -n 8"; exit 1; }

# Needs the local cluster (slurm/local-cluster.sh start); the tests skip, saying so, when it is down.
test-slurm: setup
	$(PY) -m pytest -q tests/slurm -m slurm -rs

bench: setup
	$(PY) -m mpirnn.bench

clean:
	rm -rf $(VENV) runs data/stdlib-bytes
