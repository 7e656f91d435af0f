# comfyq: `make help` lists the targets.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint migrate worker api standin db-url db-stop clean

help: ## List the targets with what they do
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {n++; name[n] = $$1; text[n] = $$2; \
	  if (length($$1) > w) w = length($$1)} END {for (i = 1; i <= n; i++) printf "  %s%-*s%s  %s\n", on, w, name[i], off, text[i]}' \
	  $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install comfyq with its dev tools

demo: $(STAMP) ## Run the end-to-end demo (embedded Postgres, stand-in, API, 2 workers, 20 prompts)
	$(BIN)/comfyq demo

test: $(STAMP) ## Run the whole test suite (TEST_DATABASE_URL, else embedded Postgres)
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the tests that need no child processes
	$(BIN)/pytest -m "not slow"

lint: $(STAMP) ## ruff, mypy (strict), the import contracts (lint-imports) and dead code (vulture)
	$(BIN)/ruff check comfyq worker tests bench
	$(BIN)/mypy -p comfyq
	$(BIN)/lint-imports
	$(BIN)/vulture

migrate: $(STAMP) ## Apply pending migrations to DATABASE_URL (or the embedded server)
	$(BIN)/comfyq migrate

worker: $(STAMP) ## Run one worker against COMFYUI_URL
	$(BIN)/python worker/worker.py

api: $(STAMP) ## Run the API under gunicorn on 127.0.0.1:8000
	$(BIN)/comfyq api

standin: $(STAMP) ## Run the ComfyUI stand-in on 127.0.0.1:8188
	$(BIN)/comfyui-standin --port 8188

db-url: $(STAMP) ## Print the database URL (starts the embedded server when DATABASE_URL is unset)
	@$(BIN)/comfyq db-url

db-stop: $(STAMP) ## Stop the embedded server
	$(BIN)/comfyq db-stop

clean: ## Remove the virtualenv and local data (var/)
	-$(BIN)/comfyq db-stop
	rm -rf $(VENV) var

# n8n (docs/n8n.md): the pinned n8n in n8n/node_modules running the workflows of n8n-workflows/.
.PHONY: n8n n8n-install n8n-stop n8n-export

n8n-install: ## Install the pinned n8n (no-op when n8n/node_modules matches n8n/package-lock.json)
	$(PYTHON) n8n/n8nctl.py install

n8n: n8n-install migrate ## Import credentials, settings and workflows, publish, start n8n on 127.0.0.1:5678 (FORCE=1: replace editor changes)
	DATABASE_URL="$${DATABASE_URL:-$$($(BIN)/comfyq db-url)}" $(PYTHON) n8n/n8nctl.py up $(if $(FORCE),--force)

n8n-export: ## Write the workflows as changed in n8n's editor back to n8n-workflows/ (review with git diff)
	$(PYTHON) n8n/n8nctl.py export

n8n-stop: ## Stop the n8n started by `make n8n`
	$(PYTHON) n8n/n8nctl.py stop

# The n8n tests (tests/n8n) need n8n installed; installing is a no-op once done.
test: n8n-install system-tools

.PHONY: system-tools
system-tools: ## Install and start what tests call: promtool (Debian's prometheus), nginx, chromium, a Redis on 127.0.0.1:6379
	@command -v promtool >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -q && apt-get install -y -q --no-install-recommends nginx; }
	@test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
	  command -v redis-server >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server; }; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; }

# Benchmarks (docs/benchmarks.md): their own environment, .bench-venv, from bench/requirements.txt (comfyq plus
# pgqueuer and procrastinate, which never enter comfyq's own dependencies). Not tests: CI runs bench-quick only
# to prove they still run. DATABASE_URL: a server where they may create scratch databases (default: the local one).
.PHONY: bench bench-quick bench-install bench-gpu-busy bench-queue-backends
BENCH_VENV ?= .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
BENCH_DB ?= $${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}

$(BENCH_STAMP): bench/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP) ## Create .bench-venv (comfyq + pgqueuer, procrastinate) and install wrk
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends wrk; }

bench: bench-install ## Run the full benchmark suite; writes docs/benchmarks.png and build/bench/ (timings: docs/benchmarks.md)
	DATABASE_URL="$(BENCH_DB)" $(BENCH_VENV)/bin/python -m bench.run --json build/bench/results.json \
		--markdown build/bench/results.md --chart docs/benchmarks.png

bench-quick: bench-install ## Run every benchmark in quick mode (what CI runs)
	DATABASE_URL="$(BENCH_DB)" $(BENCH_VENV)/bin/python -m bench.run --quick --json build/bench/quick.json \
		--chart build/bench/quick.png

bench-gpu-busy: bench-install ## Only the GPU busy ratio benchmark (bench/gpu_busy.py)
	DATABASE_URL="$(BENCH_DB)" $(BENCH_VENV)/bin/python -m bench.gpu_busy

bench-queue-backends: bench-install ## Postgres against Redis transport (bench/queue_backends.py; needs REDIS_URL's server)
	DATABASE_URL="$(BENCH_DB)" $(BENCH_VENV)/bin/python -m bench.queue_backends
