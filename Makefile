# fmnist-jax: one target per experiment. Every target runs Python through $(PYTHON), the project's
# own virtual environment by default (created on first use); `make <target> PYTHON=/path/to/python`
# uses that interpreter instead and creates nothing.

VENV    ?= .venv
PYTHON  ?= $(VENV)/bin/python
# The second, newest stack (requirements-latest.txt: jax >= 0.11 needs Python >= 3.12), for
# `make test-latest`.
LATEST_VENV ?= .venv-latest
RUNS    ?= runs
# Ruff's settings (line length 100) come from pyproject.toml.
LINT_PATHS = fmnist_jax experiments benchmarks tests
export TF_CPP_MIN_LOG_LEVEL ?= 3
export TF_ENABLE_ONEDNN_OPTS ?= 0
# XLA:CPU's per-step buffers on transparent huge pages: ~1.3x faster CPU training, read by glibc
# at process start (see fmnist_jax/runtime.py; started without it, the training command logs
# one line saying so).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

EXPERIMENTS = linreg mlp mlp-dropout cnn cnn-dropout

# Replicas per experiment (models differing only in their seeds, trained as one program; the
# claims in REPORT.md are read over them): every claim over at least 3 seeds (README.md gives each
# target's cost). `make reproduce REPLICAS=5` sets them all; each can be set on its own. A run
# folder trained with other replicas is refused: give it another RUNS=<folder>.
REPLICAS ?=
LINREG_REPLICAS ?= $(or $(REPLICAS),5)
MLP_REPLICAS ?= $(or $(REPLICAS),3)
CNN_REPLICAS ?= $(or $(REPLICAS),3)
# The sweep's members at rates 0 and 0.25 are the mlp, mlp_dropout, cnn and cnn_dropout runs
# themselves, so it trains with their seeds. Extra sweep flags, e.g. SWEEP_ARGS="--models=mlp"
# or "--num_train_steps=cnn=3000" (every rate then in runs/sweep/cnn: docs/populations.md).
SWEEP_ARGS ?=

# The interpreters the environments are built with: the first of these candidates whose version
# is at least the one asked for (pyenv's shims of versions that are installed but not selected
# fail, hence its folders); `make env BASE_PYTHON=/path/to/python3.11` chooses one.
PYTHON_CANDIDATES = python3.11 python3.12 python3.13 python3 \
	$(wildcard $(HOME)/.pyenv/versions/3.1[1-3]*/bin/python3)
find_python = $(firstword $(foreach p,$(1),$(shell $(p) -c 'import sys; \
	sys.exit(sys.version_info < tuple(map(int, "$(2)".split("."))))' >/dev/null 2>&1 && echo $(p))))
BASE_PYTHON ?= $(call find_python,$(PYTHON_CANDIDATES),3.11)
LATEST_BASE_PYTHON ?= $(call find_python,$(PYTHON_CANDIDATES),3.12)
# What the newest stack runs: the suite less five tests of process behaviour (kill and rerun,
# SIGTERM, dead or missing peers, the attack's command line end to end) that use no jax API the
# rest misses and take a quarter of the suite's time, so that `.ci/run` stays well within its
# limit.
LATEST_TESTS ?= tests \
	--deselect tests/test_main.py::test_kill_during_training_then_rerun_resumes_exactly \
	--deselect tests/test_preemption.py::test_sigterm_saves_the_step_reached_and_the_rerun_equals_a_straight_run \
	--deselect tests/test_adversarial_runner.py::test_cli_end_to_end \
	--deselect tests/test_distributed.py::test_a_peer_that_dies_ends_the_other_in_one_line_and_keeps_the_checkpoints \
	--deselect tests/test_distributed.py::test_a_peer_that_never_starts_ends_in_one_line_within_the_timeout

# The environment exists only for the default interpreter; a user-given PYTHON is used as is.
ifeq ($(PYTHON),$(VENV)/bin/python)
ENV = $(VENV)/.installed
DEV = $(VENV)/.installed-dev
else
ENV =
DEV =
endif

.PHONY: help env reproduce chain-0 chain-1 study test test-latest gpu-prep lint format figures report adversarial adversarial-replicas bench theory sweep $(EXPERIMENTS) cnn-bn clean-runs

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-21s %s\n", $$1, $$2}'

# The pinned stack, then the package itself (editable, no dependencies: requirements.txt has them),
# so that `python -m fmnist_jax...` works from any folder with this environment's python.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(if $(BASE_PYTHON),,$(error needs Python >= 3.11 (none of $(PYTHON_CANDIDATES) is): make BASE_PYTHON=/path/to/python3.11))
	$(BASE_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# Tests, lint and the headless notebook's tools, for `make test`, `lint` and `format` only.
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

env: $(ENV)  ## create the virtual environment, install requirements.txt and the package

# On a CPU two chains of experiments train at once, the ConvNets first, each process kept on
# its half of the cores (FMNIST_CPU_SHARE, fmnist_jax/runtime.py): two processes share two cores
# better than one process's threads, and better still one core each (docs/speed-cpu.md). One
# experiment at a time where a jax accelerator plugin is installed (one process holds the
# chip) or JOBS=1.
JOBS ?= $(shell $(PYTHON) -c "from fmnist_jax import runtime; \
	print(1 if runtime.installed_plugins() else 2)" 2>/dev/null || echo 1)
CHAIN_0 = cnn mlp linreg
CHAIN_1 = cnn-dropout mlp-dropout

reproduce: $(ENV)  ## set up, then run every experiment, the attack, theory, figures, report
	$(MAKE) -j$(JOBS) $(if $(filter 1,$(JOBS)),$(CHAIN_0) $(CHAIN_1),chain-0 chain-1)
	$(MAKE) adversarial theory figures report

chain-0 chain-1: chain-%:
	for goal in $(CHAIN_$*); do $(MAKE) $$goal FMNIST_CPU_SHARE=$*/2 || exit 1; done

# Both models' whole dropout-rate populations at 5 seeds, each member trained once (the
# experiments are its rates 0 and 0.25), every ConvNet attacked; it resumes where it stopped.
study:  ## reproduce, sweep and adversarial-replicas at 5 seeds -> runs/study, REPORT.md
	$(MAKE) reproduce sweep adversarial-replicas report RUNS=$(RUNS)/study \
	  REPLICAS=$(or $(REPLICAS),5)
	mkdir -p results && cp results.json results/study.json  # what README.md quotes, once committed

# Beyond the exercise: does dropout change the noise the attack needs? Every replica of cnn and
# cnn_dropout, the same 200 images and targets, the exercise's rule and minl1.
adversarial-replicas: $(ENV)  ## the attack on every replica of cnn, cnn_dropout -> runs/adversarial_replicas
	for run in cnn cnn_dropout; do $(PYTHON) -m fmnist_jax.adversarial --workdir $(RUNS)/$$run \
	  --member all --method exercise,minl1 --num_images 200 \
	  --output $(RUNS)/adversarial_replicas/$$run || exit 1; done

# The suite's tests are mostly single-threaded processes: two workers keep both cores busy.
TEST_WORKERS ?= 2

test: $(ENV) $(DEV)  ## set up (with requirements-dev.txt), then lint and run the whole test suite
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS)

# The newest jax/flax/optax/orbax the registry serves, on Python >= 3.12, in its own environment.
$(LATEST_VENV)/.installed: requirements-latest.txt requirements-dev.txt pyproject.toml
	$(if $(LATEST_BASE_PYTHON),,$(error make test-latest needs Python >= 3.12 (jax >= 0.11 does; none of $(PYTHON_CANDIDATES) is): make test-latest LATEST_BASE_PYTHON=/path/to/python3.12))
	$(LATEST_BASE_PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet -r requirements-latest.txt -r requirements-dev.txt
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-latest: $(LATEST_VENV)/.installed  ## the test suite (LATEST_TESTS) on the newest stack, in .venv-latest
	$(LATEST_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) $(LATEST_TESTS)

# benchmarks/gpu_check.sh runs on a GPU image with jax, flax, optax and orbax but without clu and
# ml-collections (nor pytest), where nothing installs from a registry: their pure-Python wheels
# (and wrapt, pluggy and iniconfig, their dependencies such an image lacks) and a copy of the
# data, carried with the tree.
GPU_WHEELS = clu==0.0.12 ml-collections==1.1.0 wrapt==2.5.2 \
	pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
FMNIST_DATA_DIR ?= ../shared/data/fashion_mnist

gpu-prep:  ## the wheels and data benchmarks/gpu_check.sh carries -> .gpu-wheels/, .gpu-data/
	$(or $(BASE_PYTHON),python3) -m pip download --quiet --no-deps --only-binary=:all: \
		--platform any --python-version 3.12 -d .gpu-wheels $(GPU_WHEELS)
	mkdir -p .gpu-data/fashion_mnist
	cp $(FMNIST_DATA_DIR)/*-ubyte.gz .gpu-data/fashion_mnist/
	@du -sh .gpu-wheels .gpu-data

lint: $(ENV) $(DEV)  ## ruff lint and format check
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)

format: $(ENV) $(DEV)  ## ruff format the code in place
	$(PYTHON) -m ruff format $(LINT_PATHS)

# The command as typed (the outermost make's: a sub-make inherits it), for a training run's
# refusal of a folder trained with another config: it names this command with another RUNS
# (fmnist_jax/rundir.py).
TYPED := $(or $(FMNIST_MAKE_COMMAND),$(strip make $(MAKECMDGOALS) \
	$(filter-out RUNS=%,$(MAKEOVERRIDES)) RUNS=$(RUNS)))
$(EXPERIMENTS) cnn-bn sweep reproduce study: export FMNIST_MAKE_COMMAND = $(TYPED)

linreg: $(ENV)  ## exercise 2.1: linear regression, SGD lr 1e-4 -> runs/linreg
	$(PYTHON) -m fmnist_jax.main --config experiments/linreg.py --workdir $(RUNS)/linreg \
		--config.num_replicas=$(LINREG_REPLICAS)

mlp: $(ENV)  ## exercise 2.2: MLP without dropout -> runs/mlp
	$(PYTHON) -m fmnist_jax.main --config experiments/mlp.py --workdir $(RUNS)/mlp \
		--config.num_replicas=$(MLP_REPLICAS)

mlp-dropout: $(ENV)  ## exercise 2.4.1: MLP with dropout 0.25 -> runs/mlp_dropout
	$(PYTHON) -m fmnist_jax.main --config experiments/mlp_dropout.py --workdir $(RUNS)/mlp_dropout \
		--config.num_replicas=$(MLP_REPLICAS)

cnn: $(ENV)  ## exercise 2.3: ConvNet without dropout -> runs/cnn
	$(PYTHON) -m fmnist_jax.main --config experiments/cnn.py --workdir $(RUNS)/cnn \
		--config.num_replicas=$(CNN_REPLICAS)

cnn-dropout: $(ENV)  ## exercise 2.4.2: ConvNet with dropout 0.25 -> runs/cnn_dropout
	$(PYTHON) -m fmnist_jax.main --config experiments/cnn_dropout.py --workdir $(RUNS)/cnn_dropout \
		--config.num_replicas=$(CNN_REPLICAS)

cnn-bn: $(ENV)  ## beyond the exercise: the ConvNet with BatchNorm (not in reproduce) -> runs/cnn_bn
	$(PYTHON) -m fmnist_jax.main --config experiments/cnn_bn.py --workdir $(RUNS)/cnn_bn \
		--config.num_replicas=$(CNN_REPLICAS)

adversarial: $(ENV)  ## exercise 2.5: targeted attacks on runs/cnn_dropout (run make cnn-dropout first)
	$(PYTHON) -m fmnist_jax.adversarial --workdir $(RUNS)/cnn_dropout --output $(RUNS)/adversarial

bench: $(ENV)  ## speed: JAX vs PyTorch twins on this machine (installs torch for benchmarks only)
	$(PYTHON) benchmarks/bench.py --check_data
	$(PYTHON) -m pip install --quiet -r benchmarks/requirements.txt
	$(PYTHON) benchmarks/bench.py
	$(PYTHON) benchmarks/replicas.py

theory: $(ENV)  ## exercise 1: the folding and sigmoid-gradient numbers -> runs/theory.json
	$(PYTHON) -m fmnist_jax.theory --out $(RUNS)/theory.json

sweep: $(ENV)  ## exercise 2.4: dropout rates 0-0.5 x seeds: the experiments' runs + runs/sweep
	$(PYTHON) -m fmnist_jax.sweep --runs $(RUNS) --replicas=mlp=$(MLP_REPLICAS) \
	  --replicas=cnn=$(CNN_REPLICAS) $(SWEEP_ARGS)

figures: $(ENV)  ## figures 2-6 from the runs' metrics.jsonl -> figures/
	$(PYTHON) -m fmnist_jax.plotting --runs $(RUNS) --out figures

report: $(ENV)  ## REPORT.md (figures, numbers, the exercise's claims checked) and its numbers in results.json
	$(PYTHON) -m fmnist_jax.report --runs $(RUNS) --figures figures --out REPORT.md

clean-runs:  ## delete runs/ and figures/ (all checkpoints and logs!)
	rm -rf $(RUNS) figures
