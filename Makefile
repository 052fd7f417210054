# kiln: `make bake ENV=dev` and `make test` work on a fresh machine (they set up .venv).
ENV ?= dev
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KILN := $(PY) bake.py
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d' ' -f1)

.PHONY: packages-bake packages-test venv store store-stop bake lint render verify push verify-registry diff try golden demo test unit integration check bench bench-bake bench-node bench-render bench-lint bench-fleet clean

venv: $(STAMP)

# System packages (.ci/packages): installed when missing as root with apt, else one line
# saying what to run.
packages-bake packages-test:
	@sh .ci/install-packages $(subst packages-,,$@)

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || sh .ci/install-packages bake
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

lint: venv
	$(KILN) lint --env $(ENV)

# dev needs no setup: without a Docker engine, a private one runs under .run/ for the bake
# (dockerd and containerd are installed first when missing and no DOCKER_HOST is set).
bake: venv
ifeq ($(ENV),dev)
	@if [ -z "$${DOCKER_HOST:-}" ]; then sh .ci/install-packages bake; fi
	$(PY) -m kiln.localengine run .run -- $(KILN) bake --env $(ENV)
else
	$(KILN) bake --env $(ENV)
endif

# Day 1 on one machine: bake, serve the store, import into a fresh containerd, show it.
demo: venv
	$(PY) -m kiln.localengine run .run -- $(PY) -m kiln.demo --env $(ENV)

# Boot the rendered user-data in a throwaway VM: make try ENV=dev BASE_IMAGE=disk.qcow2
# (a root fs image needs KERNEL=... INITRD=...).
try: venv
	$(KILN) try --env $(ENV) --base-image $(BASE_IMAGE) $(if $(ROLE),--role $(ROLE),) \
	  $(if $(KERNEL),--kernel $(KERNEL),) $(if $(INITRD),--initrd $(INITRD),) \
	  $(if $(NODE),--inventory $(or $(INVENTORY),nodes.yaml) --node $(NODE),)

# A golden image with the images inside: make golden ENV=dev BASE_IMAGE=... KERNEL=...
# INITRD=... SSH_KEY=... [GOLDEN_DIR=dist/golden]
golden: venv
	$(KILN) golden --env $(ENV) --var base_image=$(BASE_IMAGE) --var kernel=$(KERNEL) \
	  --var initrd=$(INITRD) --var ssh_key=$(SSH_KEY) --var output_dir=$(or $(GOLDEN_DIR),dist/golden)

# Day 2 (see README): make verify ENV=prod CONTAINERD_ADDRESS=/run/containerd/containerd.sock
verify: venv
	$(KILN) verify --env $(ENV) --containerd-address $(or $(CONTAINERD_ADDRESS),/run/containerd/containerd.sock)

# A real S3 server on this machine to try the S3 path: a single-node Ceph with radosgw under
# .run/ceph (objects in memory). Prints the images.yaml environment and the keys to export.
store: venv
	@sh .ci/install-packages store
	$(PY) -m kiln.cephdev start .run/ceph --port $(or $(STORE_PORT),7480)

store-stop: venv
	$(PY) -m kiln.cephdev stop .run/ceph

push verify-registry diff: venv
	$(KILN) $@ --env $(ENV)

render: venv
	$(KILN) render --env $(ENV) $(if $(INVENTORY),--inventory $(INVENTORY),)

check: venv
	$(PY) -m ruff check kiln tests bench bake.py
	$(PY) -m mypy --strict kiln
	shellcheck -s sh templates/*.sh bench/*.sh .ci/install-packages

unit: venv
	$(PY) -m pytest -q tests/unit

integration: venv
	$(PY) -m pytest -q tests/integration

# The README's test command: system packages, static checks, then every test tier.
test: packages-test check
	$(PY) -m pytest -q tests

# Benchmarks print ratios against a baseline measured in the same run (root: private engines).
bench: bench-bake bench-node bench-render bench-lint

bench-bake: venv
	$(PY) -m pip install --quiet -e '.[test,dev,bench]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/bake.py $(BENCH_ARGS)

bench-node: venv
	$(PY) bench/node_import.py

bench-render: venv
	$(PY) bench/render.py

bench-lint: venv
	$(PY) bench/lint.py

# A rack boots at once (as root: network namespaces, veths, tc; everything removed after).
bench-fleet: venv
	$(PY) bench/fleet.py $(if $(NODES),--nodes $(NODES),) $(if $(STORE),--store $(STORE),)

clean:
	rm -rf dist .run
