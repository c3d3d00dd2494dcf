"""The AWX/Tower files: surveys in AWX's survey JSON whose variables are the playbooks' own, job templates
that name existing playbooks and surveys, a collections/requirements.yml an AWX project sync can install,
and an execution-environment.yml that ansible-builder accepts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from ansible_run import REPO

SURVEYS = os.path.join(REPO, "awx", "surveys")
SURVEY_FILES = sorted(f for f in os.listdir(SURVEYS) if f.endswith(".json"))
BIN = os.path.dirname(sys.executable)
# AWX's question types, and which spec types each can feed.
QUESTION_TYPES = {"text": {"str", "raw", "path"}, "textarea": {"str", "raw"}, "password": {"str"},
                  "integer": {"int"}, "float": {"float"}, "multiplechoice": {"str", "int", "bool", "raw"},
                  "multiselect": {"list"}}


def load_yaml(*path: str):
    with open(os.path.join(REPO, *path)) as handle:
        return yaml.safe_load(handle)


def argument_spec(playbook: str) -> dict:
    return load_yaml("playbooks", "vars", "argument_specs.yml")["vmbackup_argument_specs"][playbook]["options"]


def play_defaults(playbook: str) -> dict:
    """The defaults a playbook gives its variables (its play `vars:`), templated ones left out."""
    play = load_yaml("playbooks", playbook + ".yml")[0]
    return {k: v for k, v in play.get("vars", {}).items() if not (isinstance(v, str) and "{{" in v)}


def survey(name: str) -> dict:
    with open(os.path.join(SURVEYS, name)) as handle:
        return json.load(handle)


def test_there_are_surveys_for_backup_restore_and_delete():
    assert {"backup.json", "restore.json", "delete.json"} <= set(SURVEY_FILES)


@pytest.mark.parametrize("name", SURVEY_FILES)
def test_survey_has_the_awx_survey_shape(name):
    data = survey(name)
    assert set(data) == {"name", "description", "spec"} and data["name"] and isinstance(data["spec"], list)
    variables = [q["variable"] for q in data["spec"]]
    assert len(variables) == len(set(variables)), "a variable is asked twice"
    for question in data["spec"]:
        assert {"question_name", "variable", "type", "required"} <= set(question), question
        assert question["type"] in QUESTION_TYPES, question
        assert isinstance(question["required"], bool)
        if question["type"] in ("multiplechoice", "multiselect"):
            assert isinstance(question["choices"], list) and question["choices"], question
            assert all(isinstance(c, str) for c in question["choices"])
            if "default" in question:
                assert question["default"] in question["choices"], question
        if question["type"] == "integer":
            assert isinstance(question["min"], int) and isinstance(question["max"], int)
            if "default" in question:
                assert isinstance(question["default"], int)
                assert question["min"] <= question["default"] <= question["max"]
        if question["type"] in ("text", "textarea"):
            assert 0 <= question["min"] <= question["max"]
            if "default" in question:
                assert isinstance(question["default"], str)


@pytest.mark.parametrize("name", SURVEY_FILES)
def test_survey_variables_are_the_playbooks_variables(name):
    playbook = name[:-len(".json")]
    spec = argument_spec(playbook)
    defaults = play_defaults(playbook)
    asked = {q["variable"]: q for q in survey(name)["spec"]}
    assert set(asked) <= set(spec), "asked but not a variable of %s.yml: %s" % (playbook, set(asked) - set(spec))
    for variable, option in spec.items():
        if option.get("required"):
            assert variable in asked and asked[variable]["required"], "%s is required by %s.yml" % (variable, playbook)
    for variable, question in asked.items():
        option = spec[variable]
        assert option["type"] in QUESTION_TYPES[question["type"]], (variable, option["type"], question["type"])
        if question["type"] == "multiplechoice" and "choices" in option:
            assert {str(c) for c in question["choices"]} <= {str(c) for c in option["choices"]}, variable
        if "default" in question and variable in defaults:
            assert str(question["default"]).lower() == str(defaults[variable]).lower(), \
                "%s: the survey's default %r is not the playbook's %r" % (variable, question["default"],
                                                                         defaults[variable])


def test_job_templates_name_existing_playbooks_and_surveys():
    plays = load_yaml("awx", "job_templates.yml")
    templates = plays[0]["vars"]["vmbackup_job_templates"]
    playbooks = {t["playbook"] for t in templates}
    assert {"playbooks/%s.yml" % p for p in ("backup", "restore", "delete", "prune", "discover")} <= playbooks
    for template in templates:
        assert os.path.exists(os.path.join(REPO, template["playbook"])), template
        if "survey" in template:
            assert template["survey"] in SURVEY_FILES
            assert template["survey"][:-len(".json")] == os.path.basename(template["playbook"])[:-len(".yml")]
    tasks = {next(k for k in task if k.startswith("awx.awx.")) for task in plays[0]["tasks"]}
    assert {"awx.awx.project", "awx.awx.inventory", "awx.awx.inventory_source", "awx.awx.job_template"} <= tasks


def test_collections_requirements_install_the_collection_from_the_project_root(tmp_path):
    # As an AWX project sync does: from the project's root, into a path of its own that is also the
    # configured collections path (which overrides the checkout's ansible.cfg).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path)
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r",
                           "collections/requirements.yml", "-p", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = tmp_path / "ansible_collections" / "vmbackup" / "zfs"
    assert (installed / "MANIFEST.json").exists()
    assert (installed / "plugins" / "modules" / "vm_info.py").exists()
    assert not (installed / "api").exists() and not (installed / "playbooks").exists()


def test_execution_environment_is_accepted_by_ansible_builder(tmp_path):
    data = load_yaml("execution-environment.yml")
    assert data["version"] == 3
    assert data["dependencies"]["ansible_core"]["package_pip"] == "ansible-core==2.19.14"
    builder = os.path.join(BIN, "ansible-builder")
    if not os.path.exists(builder):
        pytest.skip("ansible-builder is not installed (pip install -r requirements-dev.txt)")
    context = tmp_path / "context"
    proc = subprocess.run([builder, "create", "-f", os.path.join(REPO, "execution-environment.yml"),
                           "-c", str(context)], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p.name for p in context.iterdir()}
    assert files & {"Containerfile", "Dockerfile"}
    shutil.rmtree(context)
