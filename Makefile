# bpfscope: two commands.  `make run` sets up and starts; `make test` sets up and tests.
# Every step leaves a stamp so a second run skips what is done.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMPS := .stamps
APT_PACKAGES := clang-19 llvm-19 libbpf-dev bpftool libelf-dev zlib1g-dev linux-libc-dev \
                make gcc python3-venv iproute2 iptables nftables curl postgresql prometheus chromium linux-perf
BPFSCOPE := $(VENV)/bin/bpfscope
ARGS ?=

.PHONY: setup run test bench bpf mounts clean

setup: $(STAMPS)/apt $(STAMPS)/venv bpf mounts

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if [ "$$(id -u)" != 0 ]; then echo "bpfscope: make must run as root (it installs packages and loads BPF)"; exit 2; fi
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian may start the packaged services; tests start their own servers on free ports.
	@-for s in postgresql prometheus; do service $$s stop >/dev/null 2>&1; done; true
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

bpf: $(STAMPS)/apt
	@$(MAKE) -s -C bpf

mounts:
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

run: setup
	$(BPFSCOPE) up $(ARGS)

test: setup
	$(VENV)/bin/pytest -q -ra $(ARGS)

bench: setup
	@for b in bench/[!_]*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	@$(MAKE) -s -C bpf clean
	rm -rf $(STAMPS) $(VENV)
