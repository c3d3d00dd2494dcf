"""One home for each fact: the API takes them from the collection, and the playbooks' copies agree."""

from __future__ import annotations

import os

import yaml

from vmbackup.app import jobs
from vmbackup.domain import clock, facts, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def playbook_vars() -> dict:
    with open(os.path.join(REPO, "playbooks", "vars", "common.yml")) as handle:
        return yaml.safe_load(handle)


def argument_specs() -> dict:
    with open(os.path.join(REPO, "playbooks", "vars", "argument_specs.yml")) as handle:
        return yaml.safe_load(handle)["vmbackup_argument_specs"]


SAMPLES = {
    "definition": (["daily", "d1", "a.b-c_d", "12345678"], ["", "-x", "toolongname", "daily\n", "dä", "a b"]),
    "backup_name": (["daily-20261128_040000"], ["daily-20261128_04000", "daily-20261128_040000\n",
                                                "daily-٢٠٢٦١١٢٨_040000", "x" * 9 + "-20261128_040000"]),
    "uuid": (["9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a"], ["9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a\n", "x", ""]),
}
LAYOUT = {"definition": facts.layout.DEFINITION_RE, "backup_name": facts.layout.BACKUP_NAME_RE,
          "uuid": facts.layout.UUID_RE}


def test_the_playbooks_name_rules_are_the_collections():
    """The playbooks keep no pattern of their own: their one rule set (report.variable_problems) uses layout's,
    whose match (Jinja's and the filter's re.match) takes and refuses what fullmatch does."""
    assert not [name for name in playbook_vars() if name.endswith("_re")]
    for fact, (good, bad) in SAMPLES.items():
        for value in good:
            assert LAYOUT[fact].match(value) and LAYOUT[fact].fullmatch(value), (fact, value)
        for value in bad:
            assert not LAYOUT[fact].match(value) and not LAYOUT[fact].fullmatch(value), (fact, value)


def test_the_apis_name_rules_agree():
    for value in SAMPLES["uuid"][0]:
        assert validation.is_uuid(value)
    for value in SAMPLES["uuid"][1]:
        assert not validation.is_uuid(value)
    assert validation.DEFINITION_NAME_RE.fullmatch("daily") and not validation.DEFINITION_NAME_RE.fullmatch("daily\n")


def test_types_and_compressions_are_the_argument_specs():
    backup = argument_specs()["backup"]["options"]
    assert sorted(backup["type"]["choices"]) == sorted(facts.TYPES)
    choices = {str(c) for c in backup["compression"]["choices"]}
    assert set(facts.API_COMPRESSIONS) | set(facts.COMPRESSION_NAMES) <= choices
    assert choices <= set(facts.API_COMPRESSIONS) | set(facts.layout.COMPRESSION)
    for value in ("0", "3", 2, "zstd", "lz4"):
        assert facts.compression(value) in (0, 1, 2, 3, "zstd", "lz4")
    for value in ("4", "rar", True, ""):
        try:
            facts.compression(value)
            raise AssertionError("%r was accepted" % (value,))
        except ValueError:
            pass


def test_backup_names_and_batch_keys_have_one_home():
    assert clock.BACKUP_TIME_FORMAT == facts.layout.BACKUP_TIME_FORMAT
    name = clock.backup_name("daily", clock.parse("2026-11-28T04:00:00.000Z"))
    assert name == "daily-20261128_040000" and facts.layout.BACKUP_NAME_RE.fullmatch(name)
    assert jobs.facts.batch_key is facts.batch_key
    assert facts.batch_key("u", "2", "daily-20261128_040000") == "u:2:daily-20261128_040000"
