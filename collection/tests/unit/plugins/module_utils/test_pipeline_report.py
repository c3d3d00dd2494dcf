# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A failed pipeline names the stage that caused it (not the ones that died of SIGPIPE after it) and reports
every stage in the one failure shape of the modules."""

from __future__ import annotations

import pytest

from ansible_collections.vmbackup.zfs.plugins.module_utils.job import JobFailed, fail, failure
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline, PipelineError
from ansible_collections.vmbackup.zfs.plugins.module_utils.stream import metered_bytes, run_stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError


def test_the_stage_that_failed_is_named_with_its_exit_code_and_stderr():
    pipeline = Pipeline().add(["sh", "-c", "head -c 100000 /dev/zero"], "source")
    pipeline.add(["sh", "-c", "echo 'no space left' >&2; exit 3"], "receive")
    with pytest.raises(PipelineError) as raised:
        pipeline.run()
    assert raised.value.failed.label == "receive"
    assert "receive failed (rc=3): no space left" in str(raised.value)
    report = {stage["stage"]: stage for stage in pipeline.report()}
    assert report["receive"] == {"stage": "receive", "cmd": "sh -c 'echo '\"'\"'no space left'\"'\"' >&2; exit 3'",
                                 "rc": 3, "stderr": "no space left"}


def test_a_stage_killed_by_sigpipe_is_not_taken_for_the_cause():
    pipeline = Pipeline().add(["sh", "-c", "exec yes"], "source").add(["sh", "-c", "exit 7"], "sink")
    with pytest.raises(PipelineError) as raised:
        pipeline.run()
    assert raised.value.failed.label == "sink"


def test_a_good_pipeline_keeps_its_small_output_and_prints_itself_as_a_shell_line():
    pipeline = Pipeline().add(["printf", "a b"]).add(None).add(["wc", "-c"], "count")
    assert str(pipeline) == "printf 'a b' | wc -c"
    assert pipeline.run(capture=True).stdout.strip() == b"3"
    assert pipeline.failed_stage() is None


def test_a_failed_stream_becomes_the_modules_failure_shape(tmp_path):
    pipeline = Pipeline().add(["sh", "-c", "echo 'cannot open' >&2; exit 1"], "zfs send").add(["cat"], "meter")
    with pytest.raises(JobFailed) as raised:
        run_stream(pipeline, str(tmp_path / "progress.json"), None)
    fields = failure(raised.value)
    assert fields["cmd"] == str(pipeline) and fields["rc"] == 1 and fields["stderr"] == "cannot open"
    assert [stage["stage"] for stage in fields["stages"]] == ["zfs send", "meter"]


def test_a_zfs_command_failure_has_cmd_rc_and_stderr_and_no_stages():
    fields = failure(ZfsError(["zfs", "destroy", "zones/a@b"], 1, "dataset is busy\n"))
    assert fields == {"cmd": "zfs destroy zones/a@b", "rc": 1, "stderr": "dataset is busy", "stages": []}


def test_fail_gives_every_key_of_the_shape():
    class Module:
        def fail_json(self, **kwargs):
            self.failed = kwargs

    module = Module()
    fail(module, "target: gone", cleanup=["rename x back to y"], target="zones/x")
    assert module.failed == {"msg": "target: gone", "cmd": None, "rc": None, "stderr": None, "stages": [],
                             "cleanup": ["rename x back to y"], "target": "zones/x"}


def test_the_meter_count_is_read_from_pv():
    class Stage:
        argv = ["pv", "-n", "-b"]
        stderr = "1024\n4096\n8192\n"

    assert metered_bytes(Stage()) == 8192
    assert metered_bytes(None) is None
