# vmbackup: the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo demo-playbooks test lint molecule collection bench lab-down clean

setup:  ## system packages, .venv with pinned dependencies, the vmbackup command
	./scripts/bootstrap

demo: setup  ## the main job on the local lab: discover its VMs, an admin user, the API on :8000
	./scripts/demo

demo-playbooks: setup  ## backups of a lab VM with ansible-playbook alone
	./scripts/demo-playbooks

lint: setup  ## ruff on the Python, ansible-lint (production profile, offline) on playbooks and collection
	$(VENV)/ruff check api collection tests bench
	$(VENV)/ansible-lint -q playbooks collection

molecule: setup  ## the molecule scenario: converge, idempotence and verify on the lab's pools
	$(VENV)/molecule test

test: setup lint  ## everything the tests need, then the tests (on real zfs-fuse pools) and molecule
	$(VENV)/python -c "from vmbackup.lab import start_zfs_daemon; start_zfs_daemon()"
	$(VENV)/pytest -q tests
	$(VENV)/molecule test

collection: setup  ## the Galaxy artifact (the collection alone) in dist/
	$(VENV)/ansible-galaxy collection build collection/ --output-path dist/ --force

bench: setup
	bench/transfer

lab-down: setup
	$(VENV)/vmbackup lab down

clean:
	rm -rf dist .pytest_cache
