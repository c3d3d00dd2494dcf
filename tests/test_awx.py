"""The AWX/Tower files: surveys in AWX's survey JSON whose variables are the playbooks' own and that AWX
saves and launches with only what an operator must say, launch examples in docs/AWX.md that AWX accepts,
job templates that name existing playbooks and surveys, a collections/requirements.yml an AWX project sync
can install, and an execution-environment.yml that ansible-builder accepts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_run import REPO

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
from awx_standin import _choices as choices_of  # noqa: E402
from awx_standin import accept_or_ignore, answer_errors, load_templates, survey_defaults  # noqa: E402

from vmbackup.engine import awx_templates  # noqa: E402

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


# -- AWX's survey rules --------------------------------------------------------------------------------------
# Written from what ansible/awx states (24.6.1-145-ge21dd0a, October 2024), not copied from it:
# - saving a survey: awx/api/views/__init__.py JobTemplateSurveySpec._validate_spec_data, with the question
#   types of awx/main/constants.py SURVEY_TYPE_MAPPING;
# - launching: the stand-in's rules (tests/fixtures/awx_standin.py, whose docstring names AWX's files), the same
#   that refuse the engine's launches in tests/test_awx_engine.py.
SURVEY_TYPES = {"text": (str,), "textarea": (str,), "password": (str,), "multiplechoice": (str,),
                "multiselect": (str,), "integer": (int,), "float": (float, int)}


def spec_errors(survey: dict) -> list[str]:
    """Why AWX would refuse to save this survey ([] if it would not)."""
    errors = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(survey.get(field), kind):
            errors.append("%s: missing, or not a %s" % (field, kind.__name__))
    if errors or not survey["spec"]:
        return errors or ["spec: no questions"]
    seen = set()
    for index, question in enumerate(survey["spec"]):
        where = "question %d" % index
        if not isinstance(question, dict):
            errors.append("%s: not an object" % where)
            continue
        for field, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool)):
            if not isinstance(question.get(field), kind):
                errors.append("%s: %s missing, or not a %s" % (where, field, kind.__name__))
        if errors:
            continue
        if question["variable"] in seen:
            errors.append("%s: variable %s asked twice" % (where, question["variable"]))
        seen.add(question["variable"])
        qtype = question["type"]
        if qtype not in SURVEY_TYPES:
            errors.append("%s: type %s is not one of %s" % (where, qtype, ", ".join(SURVEY_TYPES)))
            continue
        default = question.get("default", "")
        if default != "" and not isinstance(default, SURVEY_TYPES[qtype]):
            errors.append("%s: default %r is not a %s" % (where, default, qtype))
        for limit in ("min", "max"):
            if question.get(limit) is not None and not isinstance(question[limit], int):
                errors.append("%s: %s is not an integer" % (where, limit))
        if qtype in ("multiplechoice", "multiselect"):
            if "choices" not in question:
                errors.append("%s: a %s question needs choices" % (where, qtype))
                continue
            defaults = default.splitlines() if isinstance(default, str) else default
            if qtype == "multiplechoice" and len(defaults) > 1:
                errors.append("%s: a multiplechoice question has one default" % where)
            if any(d not in choices_of(question) for d in defaults):
                errors.append("%s: default %r is not among the choices" % (where, default))
    return errors


def launch(survey: dict, extra_vars: dict, ask_variables_on_launch: bool = True) -> tuple[list[str], dict]:
    """What AWX does with a launch's extra_vars (the stand-in's rules): (its refusals, the job's variables)."""
    template = {"survey_enabled": True, "survey_spec": survey, "ask_variables_on_launch": ask_variables_on_launch}
    accepted, _ignored, errors = accept_or_ignore(template, extra_vars)
    return errors, dict(survey_defaults(template), **accepted)


def variables_needed_to_start(survey: dict) -> list[str]:
    return [q["variable"] for q in survey["spec"] if q["required"]]


def job_templates() -> list[dict]:
    return load_yaml("awx", "job_templates.yml")[0]["vars"]["vmbackup_job_templates"]


def template_asks_variables_on_launch() -> bool:
    return all(t["ask_variables_on_launch"] for t in load_templates())


def playbook_accepts(playbook: str, variables: dict) -> list[str]:
    """What the playbook's first task, validate_argument_spec, says of these variables ([] if it takes them)."""
    result = ArgumentSpecValidator(argument_spec(playbook)).validate(dict(variables))
    return [str(e) for e in result.errors]


def docs_launches() -> list[tuple[str, dict]]:
    """Every launch in docs/AWX.md: (the template's name, the request's JSON body)."""
    with open(os.path.join(REPO, "docs", "AWX.md")) as handle:
        text = handle.read().replace("\\\n", " ")
    names = dict(re.findall(r"^\s*(\w+)=\$\(id_of '([^']+)'\)", text, re.M))
    found = []
    for line in text.splitlines():
        if "curl" not in line or "/launch/" not in line or " -d " not in line:
            continue
        words = shlex.split(line.strip())
        body = json.loads(words[words.index("-d") + 1])
        url = next(w for w in words if "/launch/" in w)
        variable = re.search(r"/job_templates/\$(\w+)/launch/", url).group(1)
        found.append((names[variable], body))
    return found


MINIMAL = {  # only what an operator must say
    "backup": {"node": "backup01", "hostname": "web01", "bkpdef": "daily"},
    "restore": {"node": "backup01", "hostname": "web01", "bkpname": "daily-20261128_040000",
                "target_hostname": "web01", "target_disk_id": 1},
    "delete": {"node": "backup01", "hostname": "web01", "bkpname": "daily-20261128_040000"},
    "prune": {"node": "backup01", "hostname": "web01", "bkpdef": "daily", "retention": 7},
}


@pytest.mark.parametrize("name", SURVEY_FILES)
def test_awx_would_save_the_survey_and_keeps_its_defaults(name):
    data = survey(name)
    assert spec_errors(data) == []
    for question in data["spec"]:
        if "default" in question:  # a default that fails its own question is silently dropped by AWX
            assert answer_errors(question, {question["variable"]: question["default"]}) == [], question


@pytest.mark.parametrize("playbook", sorted(MINIMAL))
def test_awx_launches_with_only_what_the_operator_must_say(playbook):
    data = survey(playbook + ".json")
    assert set(variables_needed_to_start(data)) <= set(MINIMAL[playbook])
    for vm in ({}, {"hostname": None, "vm_uuid": "9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a"}):
        extra_vars = {k: v for k, v in dict(MINIMAL[playbook], **vm).items() if v is not None}
        errors, job = launch(data, extra_vars, template_asks_variables_on_launch())
        assert errors == [], errors
        assert playbook_accepts(playbook, job) == []


def test_awx_launches_backups_with_typed_values_and_every_compression():
    data = survey("backup.json")
    assert {"zstd", "lz4", "0", "1", "2", "3"} <= set(choices_of(next(q for q in data["spec"]
                                                                       if q["variable"] == "compression")))
    for compression in ("0", "3", "xz", "zstd", "lz4"):
        extra_vars = dict(MINIMAL["backup"], type=2, disk_id=2, compression=compression, retention=30,
                          bwlimit=10**8, fsfreeze=False)
        errors, job = launch(data, extra_vars, template_asks_variables_on_launch())
        assert errors == [] and job["fsfreeze"] is False and job["type"] == 2, errors
        assert playbook_accepts("backup", job) == []
    errors, job = launch(survey("restore.json"), dict(MINIMAL["restore"], force=False), True)
    assert errors == [] and job["force"] is False and playbook_accepts("restore", job) == []


@pytest.mark.parametrize("change,refusal", [
    ({"bkpdef": None}, "'bkpdef' value missing"),
    ({"node": None}, "'node' value missing"),
    ({"compression": "rar"}, "Value rar for 'compression' expected to be one of"),
    ({"compression": 1}, "Value 1 for 'compression' expected to be one of"),
    ({"retention": 70000}, "'retention' value 70000 is too large (must be no more than 65536)."),
    ({"disk_id": 0}, "'disk_id' value 0 is too small (must be at least 1)."),
    ({"type": 3}, "'type' value 3 is too large (must be no more than 2)."),
    ({"type": "1"}, "Value 1 for 'type' expected to be an integer."),
    ({"disk_id": True}, "Value True for 'disk_id' expected to be an integer."),
    ({"bkpdef": "far-too-long"}, "'bkpdef' value far-too-long is too large (must be no more than 8)."),
    ({"bkpdef": ""}, "'bkpdef' value  is too small (length is 0 must be at least 1)."),
    ({"hostname": 42}, "Value 42 for 'hostname' expected to be a string."),
], ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_awx_refuses_a_bad_backup_launch_as_awx_would(change, refusal):
    extra_vars = {k: v for k, v in dict(MINIMAL["backup"], **change).items() if v is not None}
    errors, _job = launch(survey("backup.json"), extra_vars)
    assert len(errors) == 1 and errors[0].startswith(refusal), errors


def test_awx_ignores_variables_no_question_asks_for_unless_the_template_takes_extra_variables():
    data, extra_vars = survey("backup.json"), dict(MINIMAL["backup"], fsfreeze=True)
    assert "fsfreeze" not in launch(data, extra_vars, ask_variables_on_launch=False)[1]
    assert launch(data, extra_vars, ask_variables_on_launch=True)[1]["fsfreeze"] is True
    assert template_asks_variables_on_launch()


def test_every_launch_in_the_docs_is_one_awx_and_the_playbook_accept():
    launches = docs_launches()
    by_name = {t["name"]: t for t in load_templates()}
    assert {os.path.basename(by_name[name]["playbook"]) for name, _body in launches} == {
        "backup.yml", "backup_batch.yml", "restore.yml", "delete.yml", "prune.yml"}
    for name, body in launches:
        assert set(body) == {"extra_vars"}, body  # nothing else needs a Prompt on launch
        template = by_name[name]
        accepted, ignored, errors = accept_or_ignore(template, body["extra_vars"])
        assert errors == [] and ignored == {}, (name, errors, ignored)
        playbook = {"backup_batch": "backup"}.get(template["playbook"][len("playbooks/"):-len(".yml")],
                                                  template["playbook"][len("playbooks/"):-len(".yml")])
        assert playbook_accepts(playbook, dict(survey_defaults(template), **accepted)) == [], (name, accepted)


def test_the_docs_name_what_each_template_requires_at_launch():
    with open(os.path.join(REPO, "docs", "AWX.md")) as handle:
        rows = re.findall(r"^\s*\| ([^|]+) \| `(\w+\.json)` \| ([^|]+) \|$", handle.read(), re.M)
    templates = {t["name"]: t.get("survey") for t in job_templates()}
    assert len(rows) == len(SURVEY_FILES)
    for name, survey_file, required in rows:
        assert templates[name] == survey_file
        assert [v.strip() for v in required.split(",")] == variables_needed_to_start(survey(survey_file))


def test_the_docs_name_the_template_of_every_job_the_api_starts():
    with open(os.path.join(REPO, "docs", "AWX.md")) as handle:
        rows = re.findall(r"^\| [^|]+ \| `(\w+\.yml)` \| ([^|]+) \|", handle.read(), re.M)
    described = {t.key: t.name for t in awx_templates.TEMPLATES}
    assert {key for key, _name in rows} == set(described) - {"discover.yml", "nodes.yml"}
    for key, name in rows:
        assert described[key] == name.strip()


# -- the files ------------------------------------------------------------------------------------------------
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
    for variable, question in asked.items():  # AWX refuses a launch without it: only what the playbook needs
        assert not question["required"] or spec[variable].get("required"), "%s has a default" % variable
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
        assert template["ask_variables_on_launch"] is True, template  # the API's jobs pass booleans and lists
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


# -- the one description --------------------------------------------------------------------------------------
def test_the_awx_files_are_the_ones_the_description_generates():
    for name, text in awx_templates.generated_files().items():
        with open(os.path.join(REPO, "awx", name)) as handle:
            assert handle.read() == text, "awx/%s differs: run python -m vmbackup.engine.awx_templates write" % name
    assert set(SURVEY_FILES) == {n.split("/", 1)[1] for n in awx_templates.generated_files() if "/" in n}


@pytest.mark.parametrize("template", awx_templates.TEMPLATES, ids=lambda t: t.key)
def test_each_described_variable_is_one_its_playbook_takes_with_the_same_type(template):
    playbook = {"backup_batch.yml": "backup"}.get(template.key, template.key[:-len(".yml")])
    assert os.path.exists(os.path.join(REPO, template.playbook))
    if playbook in ("sync", "nodes"):  # their variables are checked in the playbook itself
        return
    spec = argument_spec(playbook)
    for variable in template.variables:
        option = spec[variable.name]
        kind = {"dict-list": "list"}.get(variable.kind, variable.kind)
        assert option["type"] == kind or (variable.name == "bkpname" and option["type"] == "raw"), variable
        if variable.question:
            assert not (variable.required and variable.default is not None), \
                "%s: AWX requires a required question at launch whatever its default" % variable.name
        if option.get("required") and template.key != "backup_batch.yml":
            assert variable.required, "%s is required by %s.yml" % (variable.name, playbook)


def test_the_engine_launches_what_each_template_takes_and_refuses_a_drift():
    batch = awx_templates.template_for("backup.yml", {"node": "tb", "backups": []})
    assert batch.key == "backup_batch.yml"
    values = awx_templates.launch_vars(awx_templates.BY_KEY["delete.yml"], {
        "node": "tb", "bkpname": ["a-20261201_040000", "a-20261202_040000"], "zpool": None, "disk_id": 1,
        "vmbackup_progress_file": ""})
    assert values == {"node": "tb", "bkpname": "a-20261201_040000,a-20261202_040000", "disk_id": 1}
    with pytest.raises(awx_templates.LaunchError, match="'vmbackup: delete backups'.*snapshot: not a variable"):
        awx_templates.launch_vars(awx_templates.BY_KEY["delete.yml"], {"node": "tb", "bkpname": "x", "snapshot": 1})
    with pytest.raises(awx_templates.LaunchError, match="disk_id: '1' is not of kind int"):
        awx_templates.launch_vars(awx_templates.BY_KEY["verify.yml"], {"node": "tb", "bkpname": "x", "disk_id": "1"})
    with pytest.raises(awx_templates.LaunchError, match="backups: missing"):
        awx_templates.launch_vars(batch, {"node": "tb"})


def test_awx_requires_a_required_question_at_launch_even_with_a_default():
    question = {"variable": "target_disk_id", "type": "integer", "required": True, "min": 1, "max": 64, "default": 1}
    template = {"survey_enabled": True, "survey_spec": {"spec": [question]}, "ask_variables_on_launch": True}
    assert accept_or_ignore(template, {})[2] == ["'target_disk_id' value missing"]
    assert accept_or_ignore(template, {"target_disk_id": 2})[2] == []
    assert accept_or_ignore(dict(template, ask_variables_on_launch=False), {"target_disk_id": 2, "force": True})[1] \
        == {"force": True}
