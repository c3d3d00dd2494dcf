# vmbackup: the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test lint collection bench lab-down clean

setup:  ## system packages, .venv with pinned dependencies, the vmbackup command
	./scripts/bootstrap

demo: setup  ## the main job on the local lab
	./scripts/demo

lint: setup
	ruff check api collection tests bench

test: setup lint  ## everything the tests need, then the tests (on real zfs-fuse pools)
	$(VENV)/python -c "from vmbackup.lab import start_zfs_daemon; start_zfs_daemon()"
	$(VENV)/pytest -q tests

collection: setup  ## the Galaxy artifact (the collection alone) in dist/
	$(VENV)/ansible-galaxy collection build collection/ --output-path dist/ --force

bench: setup
	bench/transfer

lab-down: setup
	$(VENV)/vmbackup lab down

clean:
	rm -rf dist .pytest_cache
