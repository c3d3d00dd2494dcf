"""The `vmbackup` command: the service, users, and the API client in the `es` syntax.

  vmbackup serve                        the REST API
  vmbackup user add NAME [--admin]      a user (password on stdin)
  vmbackup discover                     ask the nodes for pools and VMs
  vmbackup check [--vm HOST]            Nagios-style: are the backups as fresh as their schedules say
  vmbackup login -username NAME         then: vmbackup get /vm/<host>/backup -full
  vmbackup get|create|set|delete /PATH [-param value ...] [--wait] [--table] [--url URL]
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys

from vmbackup.app import check
from vmbackup.app.application import Application
from vmbackup.app.config import DAY, Config
from vmbackup.cli import es
from vmbackup.domain.facts import TaskStatus
from vmbackup.http import server


def config_of(args: argparse.Namespace) -> Config:
    """The Config a command runs with: its options, the defaults for what it does not take."""
    given = {"data_dir": args.data_dir, "inventory": getattr(args, "inventory", None)}
    if args.command == "serve":
        token = os.environ.get("VMBACKUP_AWX_TOKEN")
        if args.awx_token_file:
            with open(args.awx_token_file) as handle:
                token = handle.read().strip()
        templates = {}
        for entry in args.awx_template:
            playbook, _, template = entry.partition("=")
            templates[playbook] = int(template) if template.isdigit() else template
        given.update(
            listen=args.listen, threads=args.threads, discover_every=None if args.no_discover else args.discover_every,
            schedule=not args.no_scheduler, schedule_interval=args.schedule_interval,
            jobs_per_node=args.jobs_per_node, size_limit=args.size_limit, body_limit=args.body_limit,
            run_retention=args.run_retention_days * DAY, task_retention=args.task_retention_days * DAY,
            stream_limit=args.stream_limit, verify_every=args.verify_every_days * DAY,
            metrics_listen=args.metrics_listen, webhooks=tuple(args.webhook), webhook_secret=webhook_secret(args),
            stale_every=args.stale_check_every, job_nice=args.job_nice, batch_runs=args.batch_runs,
            sync_import_limit=args.sync_import_limit, trusted_proxies=tuple(args.trusted_proxy or ()),
            engine=args.engine, awx_url=args.awx_url, awx_token=token, awx_templates=templates,
            awx_insecure_http=args.awx_insecure_http)
    return Config(**{k: v for k, v in given.items() if v is not None or k in NULLABLE})


# Settings whose None means something (no discovery, no limit, the CPU count), not "the default".
NULLABLE = ("discover_every", "jobs_per_node", "size_limit", "batch_runs", "metrics_listen", "awx_url",
            "awx_token", "webhook_secret")


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server.serve(config_of(args))
    return 0


def webhook_secret(args: argparse.Namespace) -> bytes | None:
    """The webhooks' shared secret: from --webhook-secret-file (one line), else VMBACKUP_WEBHOOK_SECRET."""
    if args.webhook_secret_file:
        try:
            with open(args.webhook_secret_file, "rb") as handle:
                return handle.read().strip() or None
        except OSError as err:
            raise RuntimeError("cannot read the webhook secret: %s" % err) from None
    secret = os.environ.get("VMBACKUP_WEBHOOK_SECRET", "").strip()
    return secret.encode() or None


def check_command(args: argparse.Namespace) -> int:
    thresholds = check.Thresholds(args.warn, args.crit, args.verify_warn_days, args.verify_crit_days)
    if not 0 < thresholds.warn <= thresholds.crit:
        print("VMBACKUP UNKNOWN - want 0 < --warn <= --crit")
        return check.UNKNOWN
    state, line = check.run(args.data_dir, thresholds, args.vm, args.definition)
    print(line)
    return state


def user_command(args: argparse.Namespace) -> int:
    app = Application(config_of(args))
    if args.action == "list":
        for user in app.store.users():
            print("%s\t%s\t%s" % (user["username"], "admin" if user["is_admin"] else "owner",
                                   ",".join(user.get("vms") or [])))
        return 0
    if not args.name:
        print("vmbackup: user add needs a NAME", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("Password for %s: " % args.name)
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        key = app.auth.add_user(args.name, password, admin=args.admin, vms=args.vm)
    except ValueError as err:
        print("vmbackup: %s" % err, file=sys.stderr)
        return 2
    print("user %s saved (%s); API key (ES-API-KEY), shown once: %s"
          % (args.name, "admin" if args.admin else "VM owner", key))
    return 0


def discover_command(args: argparse.Namespace) -> int:
    app = Application(config_of(args))
    print(json.dumps(app.discover(), indent=2))
    return 0


def sync_command(args: argparse.Namespace) -> int:
    app = Application(config_of(args))
    if not args.no_discover:
        app.discover()
    task = app.sync(wait=True, node=args.node, adopt=args.adopt)
    print(json.dumps({"status": task["status"], **(task.get("result") or {})}, indent=2))
    return 0 if task["status"] == TaskStatus.SUCCESS else 1


def definitions_command(args: argparse.Namespace) -> int:
    app = Application(config_of(args))
    if args.action == "export":
        text = json.dumps(app.export_definitions(), indent=2, sort_keys=True) + "\n"
        if args.file in (None, "-"):
            sys.stdout.write(text)
        else:
            with open(args.file, "w") as handle:
                handle.write(text)
        return 0
    if args.file in (None, "-"):
        data = json.load(sys.stdin)
    else:
        with open(args.file) as handle:
            data = json.load(handle)
    report = app.import_definitions(data, replace=args.replace)
    print(json.dumps(report, indent=2))
    return 0 if not report["refused"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmbackup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def service_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data-dir", default=Config.default("data_dir"),
                             help="the service's records (default: %(default)s; env VMBACKUP_DATA_DIR)")
        command.add_argument("--inventory", default=Config.default("inventory"),
                             help="Ansible inventory with groups compute and backup (default: the lab's)")

    serve = sub.add_parser("serve", help="run the REST API (waitress, threads)",
                           description="Serve the VM backup API under /api/.")
    serve.add_argument("--listen", default=Config.default("listen"), help="HOST:PORT (default: %(default)s)")
    service_options(serve)
    serve.add_argument("--threads", type=int, default=Config.default("threads"),
                       help="worker threads (default: %(default)s)")
    serve.add_argument("--discover-every", type=float, default=Config.default("discover_every"),
                       help="seconds between discoveries of nodes and VMs (default: %(default)s)")
    serve.add_argument("--no-discover", action="store_true", help="do not discover at start or on a schedule")
    serve.add_argument("--no-scheduler", action="store_true",
                       help="do not run definitions on their schedules (for a second instance)")
    serve.add_argument("--schedule-interval", type=float, default=Config.default("schedule_interval"),
                       help="seconds between checks for due definitions (default: %(default)s)")
    serve.add_argument("--jobs-per-node", type=int, default=None,
                       help="run at most this many jobs at once per backup node; queue the rest (default: no limit)")
    serve.add_argument("--size-limit", type=int, default=None,
                       help="refuse new backups (417) once all backups together hold this many bytes")
    serve.add_argument("--body-limit", type=int, default=Config.default("body_limit"),
                       help="largest request body in bytes; larger ones get 413 unread (default: %(default)s)")
    serve.add_argument("--run-retention-days", type=float, default=Config.default("run_retention") / DAY,
                       help="days a finished job's run folder (artifacts, log) is kept; its task record stays "
                            "(default: %(default)s)")
    serve.add_argument("--task-retention-days", type=float,
                       default=Config.default("task_retention") / DAY,
                       help="days an ended task's record and task log line are kept; the failure counts of the "
                            "metrics keep what they counted (default: %(default)s)")
    serve.add_argument("--stream-limit", type=float, default=Config.default("stream_limit"),
                       help="seconds an ES-STREAM answer waits for its job before it returns the current status "
                            "(default: %(default)s)")
    serve.add_argument("--verify-every-days", type=float, default=Config.default("verify_every") / DAY,
                       help="days between restore drills of each definition's newest backup, spread over that time; "
                            "0: no scheduled drills (default: %(default)s)")
    serve.add_argument("--job-nice", type=int, default=Config.default("job_nice"), choices=range(0, 20),
                       metavar="0-19", help="niceness of the local playbook runs, so that the API answers quickly "
                       "while they work; where autogroups would undo it, the runs also join a CPU cgroup of "
                       "that weight (default: %(default)s; 0: the service's own)")
    serve.add_argument("--batch-runs", type=int, default=None, metavar="N",
                       help="runs a backup node's scheduled batch is split into, each compute node's disks in one "
                       "(default: the number of CPUs, %d here)" % (os.cpu_count() or 1))
    serve.add_argument("--trusted-proxy", action="append", metavar="ADDRESS",
                       help="a reverse proxy's address (repeat): its requests are the client's that the last "
                       "X-Forwarded-For entry names, so login throttling counts each client, not the proxy")
    serve.add_argument("--sync-import-limit", type=int, default=Config.default("sync_import_limit"), metavar="N",
                       help="backups a sync imports from one backup node at most (what a node lists is only its "
                       "word; default: %(default)s)")
    serve.add_argument("--engine", choices=["local", "awx"], default="local",
                       help="where jobs run: local ansible-runner processes, or AWX job templates (default: local)")
    serve.add_argument("--awx-url", help="AWX (Ansible Automation Platform) URL, https://, for --engine awx")
    serve.add_argument("--awx-insecure-http", action="store_true",
                       help="accept an http:// --awx-url (the token then crosses the network in clear: a test AWX "
                       "on this machine only)")
    serve.add_argument("--awx-token-file", help="file holding an AWX OAuth2 token (or env VMBACKUP_AWX_TOKEN)")
    serve.add_argument("--awx-template", action="append", default=[], metavar="PLAYBOOK=TEMPLATE",
                       help="the AWX job template (id or name) of a playbook, e.g. backup.yml=12; default: the names "
                            "awx/job_templates.yml creates; repeat")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="also serve /metrics without authentication here, for a Prometheus scraper "
                            "(HOST defaults to 127.0.0.1; GET /api/metrics needs an admin login)")
    serve.add_argument("--webhook", action="append", default=[], metavar="URL",
                       help="POST alerts (failed job, LOST backups, failed drill, stale definition) here; repeat")
    serve.add_argument("--webhook-secret-file", metavar="FILE",
                       help="the shared secret the alerts are signed with (default: env VMBACKUP_WEBHOOK_SECRET)")
    serve.add_argument("--stale-check-every", type=float, default=Config.default("stale_every"),
                       help="seconds between checks for stale definitions, for the webhooks (default: %(default)s)")
    serve.set_defaults(func=serve_command)

    user = sub.add_parser("user", help="add or list API users",
                          description="Add a user (password read from stdin) or list users.")
    user.add_argument("action", choices=["add", "list"])
    user.add_argument("name", nargs="?", help="user name (for add)")
    user.add_argument("--admin", action="store_true", help="may read and write everything")
    user.add_argument("--vm", action="append", default=[], help="a VM (hostname or uuid) this user owns; repeat")
    service_options(user)
    user.set_defaults(func=user_command)

    checker = sub.add_parser(
        "check", help="Nagios/Icinga check: backups (and restore drills) as fresh as their schedules say",
        description="Read the data dir and rate every active definition by the age of its newest good backup "
                    "in intervals of its own schedule (a definition without backups counts from its creation). "
                    "Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line with perfdata.")
    checker.add_argument("--data-dir", default=Config.default("data_dir"),
                         help="the service's records (default: %(default)s; env VMBACKUP_DATA_DIR)")
    checker.add_argument("--warn", type=float, default=1.5, help="WARNING past this many intervals (%(default)s)")
    checker.add_argument("--crit", type=float, default=3.0, help="CRITICAL past this many intervals (%(default)s)")
    checker.add_argument("--verify-warn-days", type=float, help="WARNING when no restore drill passed in this many "
                         "days (off by default; a failed last drill is then CRITICAL)")
    checker.add_argument("--verify-crit-days", type=float, help="CRITICAL when no restore drill passed in this "
                         "many days (off by default)")
    checker.add_argument("--vm", help="only this VM (hostname or uuid)")
    checker.add_argument("--definition", help="only definitions of this name")
    checker.set_defaults(func=check_command)

    def unknown(message: str) -> None:  # a bad option is UNKNOWN (3) to a monitor, not argparse's 2 (CRITICAL)
        print("VMBACKUP UNKNOWN - %s" % message)
        sys.exit(3)

    checker.error = unknown

    discover = sub.add_parser("discover", help="ask the nodes for their pools and VMs now")
    service_options(discover)
    discover.set_defaults(func=discover_command)

    sync = sub.add_parser("sync", help="compare the records with what the backup nodes hold",
                          description="List the backups on every operational backup node (or --node) and bring "
                                      "the records in line: data gone -> LOST, seen again -> OK, backups without a "
                                      "record are imported. Discovers the nodes first unless --no-discover.")
    service_options(sync)
    sync.add_argument("--node", help="only this backup node")
    sync.add_argument("--no-discover", action="store_true", help="use the nodes and pools recorded last")
    sync.add_argument("--adopt", action="store_true",
                      help="also import backups of VMs that no compute node reports (deleted VMs, a rebuilt "
                      "controller); without it they are listed as skipped, with the reason in the log")
    sync.set_defaults(func=sync_command)

    definitions = sub.add_parser("definitions", help="export or import backup definitions (JSON)",
                                 description="Export the backup definitions to a JSON file, or import them on a new "
                                             "controller (after `vmbackup discover`), so that schedules come back.")
    definitions.add_argument("action", choices=["export", "import"])
    definitions.add_argument("file", nargs="?", help="the JSON file (default: standard output / input)")
    definitions.add_argument("--replace", action="store_true", help="on import, replace definitions that exist")
    service_options(definitions)
    definitions.set_defaults(func=definitions_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("get", "create", "set", "delete", "login", "logout"):
        return es.main(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuntimeError as err:
        print("vmbackup: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
