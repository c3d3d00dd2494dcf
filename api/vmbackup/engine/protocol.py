"""What the application asks of an engine, the place where playbooks run: the local ansible-runner processes
(`runner.Runner`), AWX job templates (`awx.AwxEngine`), or in the fast tests a fake that ends runs as told.
The queue, the scheduler and the service know engines only by this."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from vmbackup.engine.runner import RunResult

Done = Callable[[RunResult], None]


@runtime_checkable
class Engine(Protocol):
    """Runs of playbooks, each named by its task id (`ident`)."""

    def start(self, ident: str, playbook: str, extravars: dict, on_done: Done) -> dict:
        """Start `playbooks/<playbook>` with `extravars` (data, never templated); call `on_done` once when it
        ends. Returns what the task record keeps to find the run again (a pid, an AWX job id)."""

    def started(self, ident: str) -> bool:
        """Whether a run was started for `ident` (by this process or an earlier one)."""

    def reattach(self, ident: str, on_done: Done) -> None:
        """Follow a run an earlier process started; `on_done` when it ends (at once if it has)."""

    def running(self, ident: str) -> bool:
        """Whether the run is still working."""

    def cancel(self, ident: str) -> bool:
        """Stop the run; whether there was one to stop."""

    def progress(self, ident: str) -> dict:
        """The run's current step, and bytes sent and expected during transfers."""

    def progress_file(self, ident: str, item: int | None = None) -> str:
        """Where the send module writes its progress, as the playbook's `vmbackup_progress_file`."""

    def events(self, ident: str) -> list[dict]:
        """The run's events (ansible-runner's shape)."""

    def result(self, ident: str) -> RunResult:
        """What the ended run says."""

    def remove(self, ident: str) -> None:
        """Forget an ended run's files."""

    def purge(self, older_than: float, keep: Callable[[str], bool]) -> list[str]:
        """Remove the files of runs ended more than `older_than` seconds ago, but those `keep` names."""
