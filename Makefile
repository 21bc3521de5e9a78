# make test: create .venv if missing, install the package with its test extras, run the tests.
# make lint: ruff over the repository. make demo: the reference HPM pretraining demo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hpm-installed
PYTEST_ARGS ?=

.PHONY: test lint install clean demo

$(PY):
	$(PYTHON) -m venv $(VENV)

CSRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh)

# The C++/CUDA extensions are compiled by this install step (CUDA wherever setup.py finds a usable
# toolkit; hpm_kernels/build_config.py says how, hpm_kernels/_build.json what it decided).
$(STAMP): $(PY) setup.py pyproject.toml requirements/torch.txt $(CSRC)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements/torch.txt
	$(PY) -m pip install --no-build-isolation -e '.[test]'
	@$(PY) -c "from hpm_kernels.build_config import summary; print(summary())"
	touch $@

install: $(STAMP)

# pytest exits 5 when it collects no test: that is a broken selection, never a pass.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); failing" >&2; exit 1; fi; \
	exit $$rc

# The main job: a short HPM pretraining on ELPV solar cells (installed from PyPI) with the fused
# ops, then the hardness-map PNG; prints throughput and where the outputs are.
demo: $(STAMP)
	$(PY) -m hpm_pretrain.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info

# Benchmarks (never part of `make test`): the CPU suite to JSON, then the generated report.
# ~10 minutes on 2 quiet cores; see benchmarks/README.md for the knobs (HPM_BENCH_*).
BENCH_DEVICE ?= cpu
BENCH_JSON ?= benchmarks/results/cpu.json
BENCH_OUT ?= benchmarks/RESULTS.md
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	@mkdir -p $(dir $(BENCH_JSON))
	HPM_BENCH_DEVICE=$(BENCH_DEVICE) $(PY) -m pytest benchmarks/ --benchmark-only -p no:cacheprovider \
		--benchmark-json=$(BENCH_JSON) --benchmark-columns=median,iqr,rounds,iterations $(BENCH_ARGS)
	$(PY) benchmarks/report.py $(BENCH_JSON) --out $(BENCH_OUT)

# Time to accuracy (never part of `make test`): kNN vs training wall time per setting at the
# protocol of benchmarks/time_to_accuracy.py (~15 minutes a setting on 2 cores, evaluation
# included; resumes), then the step-time ratios to the official structure, then both reports.
.PHONY: bench-tta
bench-tta: $(STAMP)
	$(PY) benchmarks/time_to_accuracy.py
	$(PY) benchmarks/trainer_step.py
	$(PY) benchmarks/time_to_accuracy.py --report
	$(PY) benchmarks/trainer_step.py --report

# patch_mae: unpatched vs patched training steps of MAE- and HPM-interface models, then the report.
.PHONY: bench-integrations
bench-integrations: $(STAMP)
	$(PY) benchmarks/integrations_step.py
	$(PY) benchmarks/integrations_step.py --report

# Supported versions (never part of `make test`: ~15 minutes a row on 2 cores, downloads included).
# Builds and tests a copy of the tree in .compat/<row>/ against the oldest supported torch and the
# GPU machine's versions (tests/compat/compat.py), records each row in tests/compat/results/ and
# rewrites the matrix in README.md. One row: make compat COMPAT_ARGS="--rows gpu-machine".
COMPAT_ARGS ?=
.PHONY: compat
compat:
	$(PYTHON) tests/compat/compat.py $(COMPAT_ARGS)
