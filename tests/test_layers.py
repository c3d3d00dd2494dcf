"""The API's layers (cli -> http -> app -> store | engine -> domain) are a checked contract, not a wish:
`make lint` runs lint-imports with pyproject.toml's [tool.importlinter], and here it fails on a copy of the
tree with one bad import added. Fast: no ZFS, no server."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
API = os.path.join(ROOT, "api", "vmbackup")


def lint_imports(tree: str) -> subprocess.CompletedProcess:
    """lint-imports on `tree` (a folder with api/, labs/ and pyproject.toml), importing vmbackup from there."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(tree, "api"), os.path.join(tree, "labs")]))
    return subprocess.run([os.path.join(BIN, "lint-imports"), "--no-cache", "--no-logo"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path):
    for name in ("api", "labs"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    return tmp_path


def add_line(path, line: str) -> None:
    with open(path, "a") as handle:
        handle.write("\n%s  # noqa\n" % line)


def test_the_tree_keeps_its_contracts(tree):
    proc = lint_imports(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("domain/errors.py", "from vmbackup.app import check", "import only downward"),        # upward
    ("store/journal.py", "from vmbackup.engine import runner", "import only downward"),     # sideways
    ("app/backups.py", "from vmbackup.http import routes", "import only downward"),         # upward
    ("app/check.py", "import vmbackup_lab.lab", "does not import the labs"),                # the product loads the lab
])
def test_an_import_against_the_layers_fails_the_check(tree, module, line, contract):
    add_line(tree / "api" / "vmbackup" / module, line)
    proc = lint_imports(tree)
    assert proc.returncode != 0, proc.stdout
    assert "BROKEN" in proc.stdout and contract in proc.stdout.split("BROKEN")[0].splitlines()[-1]


def test_a_cycle_hidden_in_a_function_fails_the_check(tree):
    # What jobs.py and sync.py once did: sync imports jobs at the top, jobs imports sync inside a function.
    with open(tree / "api" / "vmbackup" / "app" / "sync.py", "a") as handle:
        handle.write("\n\ndef _cycle():\n    from vmbackup.app import jobs  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0 and "no import cycles between vmbackup's modules BROKEN" in proc.stdout, proc.stdout


def test_a_module_outside_every_layer_fails_the_check(tree):
    (tree / "api" / "vmbackup" / "loose.py").write_text('"""A module in no layer."""\n')
    proc = lint_imports(tree)
    assert proc.returncode != 0 and "loose" in proc.stdout, proc.stdout


def test_vmbackup_imports_vmbackup_only_at_the_top_of_files():
    inside = []
    for folder, _, files in os.walk(API):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as handle:
                tree = ast.parse(handle.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    for inner in ast.walk(node):
                        names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else \
                            [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
                        if any(n == "vmbackup" or n.startswith(("vmbackup.", "vmbackup_lab")) for n in names):
                            inside.append("%s:%d" % (os.path.relpath(path, ROOT), inner.lineno))
    assert inside == []
