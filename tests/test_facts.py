"""One home for each fact: the API takes them from the collection, and the playbooks' copies agree."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from vmbackup.app import jobs
from vmbackup.domain import clock, errors, facts, validation

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


def test_the_apis_name_rules_are_the_collections():
    for value in SAMPLES["uuid"][0]:
        assert validation.is_uuid(value)
    for value in SAMPLES["uuid"][1]:
        assert not validation.is_uuid(value)
    for value in SAMPLES["definition"][0]:
        validation.check_definition_name(value)
    for value in SAMPLES["definition"][1]:
        with pytest.raises(errors.ValidationFailed):
            validation.check_definition_name(value)
    assert validation.is_pool_name("zones") and validation.is_pool_name("a" * 255)
    assert not any(validation.is_pool_name(v) for v in ("a" * 256, "1zones", "zones\n", "-x", "", None))


# The API's own patterns: what is not a fact shared with the collection (a cron field, a YAML key, its own
# file names). Any other pattern in the API belongs in the collection's layout.
API_PATTERNS = {("domain/validation.py", "CRON_RE"), ("engine/unsafe.py", "KEY_RE"),
                ("store/storage.py", "PARTITION_RE"), ("store/journal.py", "SEGMENT_RE")}


def test_no_name_pattern_has_a_second_home_in_the_api():
    """Names, digests, uuids, host names, paths and times a node or a client gives are checked with layout's
    patterns: the API compiles only the patterns of its own concerns."""
    found = set()
    root = os.path.join(REPO, "api", "vmbackup")
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as handle:
                    for match in re.finditer(r"^(\w+) = re\.compile\(", handle.read(), re.M):
                        found.add((os.path.relpath(path, root), match.group(1)))
    assert found == API_PATTERNS


def test_one_time_format_everywhere():
    """The API, the modules and the playbooks write times one way (layout.utc_stamp: ISO 8601 UTC to the
    millisecond); each reads what the others wrote, and older texts with 0 or 6 decimals."""
    from ansible_collections.vmbackup.zfs.plugins.module_utils import job
    written = [clock.iso(clock.now()), job.utc_now(), facts.layout.utc_stamp(0)]
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", t) for t in written)
    assert facts.layout.utc_stamp(0) == "1970-01-01T00:00:00.000Z"
    for text in ("2026-11-28T04:00:00Z", "2026-11-28T04:00:00.1Z", "2026-11-28T04:00:00.123456Z"):
        assert clock.parse(text).strftime("%Y%m%d_%H%M%S") == "20261128_040000"
    for text in ("2026-11-28 04:00:00", "2026-11-28T04:00:00+01:00", "2026-11-28T04:00:00.000Z\n"):
        with pytest.raises(ValueError):
            clock.parse(text)
    # No other writer of times: strftime with an ISO date is layout's alone, and the playbooks use its filter.
    for top in ("api", "collection/plugins", "playbooks"):
        for folder, _dirs, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith((".py", ".yml")) and name != "layout.py":
                    with open(os.path.join(folder, name)) as handle:
                        assert "%Y-%m-%dT" not in handle.read(), os.path.join(folder, name)


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
