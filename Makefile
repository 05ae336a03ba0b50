# certledger: everything installs from the lock files (requirements.lock, requirements-slither.lock,
# package-lock.json); nothing is fetched at build or test time.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

# ---- tools ----------------------------------------------------------------------------------------
PYTHON        ?= python3
NPM           ?= npm
ROOT          := $(CURDIR)
VENV          := $(ROOT)/.venv
PY            := $(VENV)/bin/python
PYTEST        := $(VENV)/bin/pytest
RUFF          := $(VENV)/bin/ruff
MYPY          := $(VENV)/bin/mypy
CERTLEDGER    := $(VENV)/bin/certledger
SLITHER_VENV  := $(ROOT)/.venv-slither
SLITHER       := $(SLITHER_VENV)/bin/slither
NODE_BIN      := $(ROOT)/node_modules/.bin
# The npm packages' launchers (node_modules/.bin/forge, anvil) do not pass the binary's exit code on:
# a failing `forge test` through them exits 0. Call the platform binaries they wrap.
# npm installs the one matching this machine (names like forge-linux-amd64).
FOUNDRY_OS    := $(shell uname -s | tr A-Z a-z)
FOUNDRY_ARCH  := $(subst aarch64,arm64,$(subst x86_64,amd64,$(shell uname -m)))
FORGE_DIR     := $(ROOT)/node_modules/@foundry-rs/forge-$(FOUNDRY_OS)-$(FOUNDRY_ARCH)/bin
ANVIL_DIR     := $(ROOT)/node_modules/@foundry-rs/anvil-$(FOUNDRY_OS)-$(FOUNDRY_ARCH)/bin
FORGE         := $(FORGE_DIR)/forge
ANVIL         := $(ANVIL_DIR)/anvil
# Gas snapshot: unit tests only (fuzz and invariant averages vary with the corpus).
SNAPSHOT_ARGS := --no-match-test "testFuzz|invariant"
CONTRACTS_DIR := $(ROOT)/contracts

# slither (through crytic-compile) runs plain `forge`, and anvil tests look for `anvil`: both must find
# the npm-pinned binaries first, never a foundryup install that happens to be on the machine.
export PATH := $(FORGE_DIR):$(ANVIL_DIR):$(NODE_BIN):$(PATH)
export ANVIL

# Stamps live inside the directories they describe, so deleting a venv or node_modules also forgets
# that it was installed.
VENV_STAMP    := $(VENV)/.certledger-installed
NODE_STAMP    := $(ROOT)/node_modules/.certledger-installed
SLITHER_STAMP := $(SLITHER_VENV)/.certledger-installed
# The MQTT broker the oracle's gateway listens on (tests start their own on a free loopback port).
MOSQUITTO     ?= $(shell command -v mosquitto || echo /usr/sbin/mosquitto)
export MOSQUITTO
# Debian's Chromium: the API tests render /docs and /redoc in it (headless, loopback only).
CHROMIUM      ?= $(shell command -v chromium || echo /usr/bin/chromium)
export CHROMIUM

.PHONY: help venv node slither-venv mosquitto chromium contracts demo test lint bench clean distclean lock lock-slither lock-npm

help:
	@echo "make demo | test | lint | contracts | bench | clean | distclean | lock | lock-slither | lock-npm"

# ---- environments ---------------------------------------------------------------------------------
venv: $(VENV_STAMP)
$(VENV_STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

node: $(NODE_STAMP)
# npm ci wipes node_modules (stamp included) and installs exactly package-lock.json. Regenerate that
# lock only with `make lock-npm`: see there why the npm version matters.
$(NODE_STAMP): package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	test -L contracts/node_modules || ln -s ../node_modules contracts/node_modules
	$(FORGE) --version >/dev/null
	$(ANVIL) --version >/dev/null
	touch $@

slither-venv: $(SLITHER_STAMP)
$(SLITHER_STAMP): requirements-slither.lock
	test -x $(SLITHER_VENV)/bin/python || $(PYTHON) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/python -m pip install --quiet -r requirements-slither.lock
	$(SLITHER_VENV)/bin/python -m pip check
	touch $@

mosquitto:
	test -x $(MOSQUITTO) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
	test -x $(MOSQUITTO)

chromium:
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	test -x $(CHROMIUM)

# ---- build and run --------------------------------------------------------------------------------
contracts: venv node
	$(PY) -m chain_client.compiler

demo: venv node mosquitto
	$(CERTLEDGER) demo

bench: venv node mosquitto
	$(PY) scripts/bench_gas.py
	$(PY) scripts/bench_replay.py
	$(PY) scripts/bench_oracle.py
	$(PY) scripts/bench_api.py

# Each step is its own recipe line, so the first failure stops `make test` with its exit code.
# forge resolves foundry.toml's relative solc path against the working directory: always cd first.
test: venv node slither-venv mosquitto chromium
	$(PY) -m chain_client.compiler --check
	cd $(CONTRACTS_DIR) && $(FORGE) test
	if [[ -f $(CONTRACTS_DIR)/.gas-snapshot ]]; then cd $(CONTRACTS_DIR) && $(FORGE) snapshot --check $(SNAPSHOT_ARGS); fi
	cd $(CONTRACTS_DIR) && $(SLITHER) . --config-file slither.config.json
	$(PYTEST)

lint: venv
	$(RUFF) check .
	$(RUFF) format --check .
	$(MYPY)

# ---- housekeeping ---------------------------------------------------------------------------------
clean:
	rm -rf contracts/out contracts/cache .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/tmp
	rm -rf build dist *.egg-info
	find . -path ./node_modules -prune -o -path './.venv*' -prune -o -type d -name __pycache__ -print0 \
		| xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) $(SLITHER_VENV) node_modules

# Rewrite the pins below each lock file's comment header from what the venv now holds.
lock: venv
	{ grep '^#' requirements.lock; \
	  $(PY) -m pip freeze --exclude-editable --exclude certledger | LC_ALL=C sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	touch $(VENV_STAMP)

SLITHER_PIN ?= $(shell grep -i '^slither-analyzer==' requirements-slither.lock)
lock-slither:
	rm -rf $(SLITHER_VENV).new
	$(PYTHON) -m venv $(SLITHER_VENV).new
	$(SLITHER_VENV).new/bin/python -m pip install --quiet '$(SLITHER_PIN)'
	{ grep '^#' requirements-slither.lock; \
	  $(SLITHER_VENV).new/bin/python -m pip freeze | LC_ALL=C sort -f; } > requirements-slither.lock.new
	rm -rf $(SLITHER_VENV).new
	mv requirements-slither.lock.new requirements-slither.lock

# @foundry-rs/forge and anvil list per-platform optionalDependencies that were never published.
# npm >= 11.16 drops them from the lock it writes and then `npm ci` rejects that same lock as out of
# sync ("Missing: @foundry-rs/anvil-darwin-amd64@ from lock file", npm/cli#9846). npm 11.13 records
# inert placeholders for them, which every npm since accepts; so the lock is written by that version.
NPM_LOCK_WRITER ?= npm@11.13.0
lock-npm:
	npx --yes $(NPM_LOCK_WRITER) install --package-lock-only --ignore-scripts --no-audit --no-fund
	rm -f $(NODE_STAMP)
