# vmbackup: the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo demo-playbooks test test-fast lint sanity molecule collection bench lab-down clean

setup:  ## system packages, .venv with pinned dependencies, the vmbackup command
	./scripts/bootstrap

demo: setup  ## the main job on the local lab: discover its VMs, an admin user, the API on :8000
	./scripts/demo

demo-playbooks: setup  ## backups of a lab VM with ansible-playbook alone
	./scripts/demo-playbooks

# What ansible-test's pep8 sanity test runs; ruff has no E12x (continuation line) rules.
PEP8 := $(VENV)/pycodestyle --max-line-length 160 --ignore E402,W503,W504,E741,E203,E701,E704

lint: setup  ## ruff, the API's layers (lint-imports), pycodestyle on the collection, ansible-lint on playbooks and the collection
	$(VENV)/ruff check api collection tests bench labs
	$(VENV)/lint-imports --no-cache --no-logo  # contracts: pyproject.toml [tool.importlinter]
	$(PEP8) collection
	$(VENV)/ansible-lint -q playbooks
	./scripts/sanity --lint

sanity: setup  ## ansible-test sanity and units on a real copy of the collection (ansible_collections/vmbackup/zfs)
	./scripts/sanity

molecule: setup  ## the molecule scenario: converge, idempotence and verify on the lab's pools
	$(VENV)/molecule test

# The OpenZFS lab of the tests (tests/conftest.py boots its guests; stopped once pytest ends, pass or fail).
OZLAB_TEST_DIR := /var/tmp/vmbackup-ozlab-test

test: setup lint sanity  ## everything the tests need, then the tests (unit, zfs-fuse pools, OpenZFS guests) and molecule
	$(VENV)/vmbackup-lab ozlab image
	$(VENV)/python -c "from vmbackup_lab.lab import start_zfs_daemon; start_zfs_daemon()"
	$(VENV)/pytest -q -n 2 --dist loadfile --durations=30 collection/tests/unit tests; rc=$$?; \
	  $(VENV)/vmbackup-lab ozlab down --dir $(OZLAB_TEST_DIR); exit $$rc
	$(VENV)/molecule test

# The fast tier (seconds, no pool, no ssh, no ansible): the API's layers with a fake engine (tests/fake_engine.py),
# the layer contracts, the facts shared with the collection, the collection's unit tests. `make test` runs them too.
FAST_TESTS := tests/test_fast.py tests/test_layers.py tests/test_facts.py collection/tests/unit

test-fast: setup  ## the fast tier of the tests, under a minute
	$(VENV)/pytest -q $(FAST_TESTS)

collection: setup  ## the Galaxy artifact (the collection alone) in dist/
	$(VENV)/ansible-galaxy collection build collection/ --output-path dist/ --force

bench: setup
	bench/transfer

lab-down: setup  ## stop the labs: zfs-fuse pools, and the OpenZFS guests of `vmbackup-lab ozlab up` and of the tests
	$(VENV)/vmbackup-lab lab down
	$(VENV)/vmbackup-lab ozlab down
	$(VENV)/vmbackup-lab ozlab down --dir $(OZLAB_TEST_DIR)

clean:
	rm -rf dist .pytest_cache
