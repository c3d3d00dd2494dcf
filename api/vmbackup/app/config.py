"""Every setting of a service instance, each default once: the command line builds a Config (`vmbackup serve
--help` shows these defaults), the application takes it whole."""

from __future__ import annotations

import dataclasses
import os

from vmbackup.app.sync import IMPORT_LIMIT
from vmbackup.domain import paths

DAY = 86400.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclasses.dataclass(frozen=True)
class Config:
    """What `vmbackup serve` and the record commands run with."""

    data_dir: str = dataclasses.field(default_factory=lambda: _env("VMBACKUP_DATA_DIR", "/var/lib/vmbackup"))
    inventory: str = dataclasses.field(default_factory=lambda: _env(
        "VMBACKUP_INVENTORY", os.path.join(paths.INVENTORY, "lab", "hosts.yml")))
    # HTTP
    listen: str = "127.0.0.1:8000"
    threads: int = 8
    body_limit: int = 1 << 20             # bytes of a request body
    stream_limit: float = 3600.0          # seconds an ES-STREAM answer waits for its job at most
    trusted_proxies: tuple[str, ...] = ()
    metrics_listen: str | None = None     # HOST:PORT of /metrics without authentication
    # Background work
    discover_every: float | None = 600.0  # seconds between discoveries (and syncs); None: none
    schedule: bool = True                 # run definitions on their schedules
    schedule_interval: float = 5.0        # seconds between checks for due definitions
    verify_every: float = 7 * DAY         # seconds between drills of each definition's newest backup; 0: none
    stale_every: float = 300.0            # seconds between checks for stale definitions (webhooks)
    checkpoint_every: float = 2.0         # seconds between folding the store's journal into its files
    run_retention: float = 30 * DAY       # seconds a finished run's folder (artifacts, log) is kept
    task_retention: float = 90 * DAY      # seconds an ended task's record and log line are kept (counts stay)
    # Jobs
    jobs_per_node: int | None = None      # jobs at once per backup node; None: no limit
    size_limit: int | None = None         # bytes all backups may hold before new ones are refused (417)
    batch_runs: int | None = None         # runs a scheduled batch is split into; None: the CPUs
    sync_import_limit: int = IMPORT_LIMIT  # backups a sync imports from one backup node at most
    job_nice: int = 10                    # niceness of the local playbook runs (0: the service's own)
    engine: str = "local"                 # local or awx
    awx_url: str | None = None
    awx_token: str | None = dataclasses.field(default=None, repr=False)
    awx_templates: dict = dataclasses.field(default_factory=dict)
    awx_insecure_http: bool = False
    # Alerts
    webhooks: tuple[str, ...] = ()
    webhook_secret: bytes | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", os.path.abspath(self.data_dir))
        object.__setattr__(self, "inventory", os.path.abspath(self.inventory))

    def check(self) -> None:
        """Settings that do not go together: a RuntimeError that names the option and the fix."""
        if self.engine not in ("local", "awx"):
            raise RuntimeError("--engine: local or awx, not %r" % self.engine)
        if self.engine == "awx" and (not self.awx_url or not self.awx_token):
            raise RuntimeError("--engine awx needs --awx-url and a token (--awx-token-file or VMBACKUP_AWX_TOKEN)")
        if self.webhooks and not self.webhook_secret:
            raise RuntimeError("--webhook needs a secret to sign with: --webhook-secret-file FILE or "
                               "VMBACKUP_WEBHOOK_SECRET")

    @classmethod
    def default(cls, name: str):
        """The default of one setting, for the command line's help."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        return field.default_factory() if field.default is dataclasses.MISSING else field.default
