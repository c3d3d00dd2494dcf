"""The `vmbackup` command."""

from __future__ import annotations

import argparse
import sys

from vmbackup import lab as labmod


def lab_command(args: argparse.Namespace) -> int:
    lab = labmod.Lab(directory=args.dir, compute_pool=args.compute_pool, backup_pool=args.backup_pool,
                     pool_size=args.size)
    if args.action == "up":
        if args.install:
            labmod.install_packages()
        lab.up(data_mb=args.data_mb)
        print(lab.status())
    elif args.action == "down":
        lab.down()
    else:
        print(lab.status())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmbackup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="the local lab: zfs-fuse pools standing in for a compute and a backup node",
                         description="Create (up), show (status) or remove (down) the local lab. Idempotent.")
    lab.add_argument("action", choices=["up", "down", "status"])
    defaults = labmod.Lab()
    lab.add_argument("--dir", default=defaults.directory, help="where pool files live (default: %(default)s; "
                     "env VMBACKUP_LAB_DIR)")
    lab.add_argument("--compute-pool", default=defaults.compute_pool, help="compute node pool (default: %(default)s)")
    lab.add_argument("--backup-pool", default=defaults.backup_pool, help="backup node pool (default: %(default)s)")
    lab.add_argument("--size", default=defaults.pool_size, help="size of each pool file (default: %(default)s)")
    lab.add_argument("--data-mb", type=int, default=16, help="MiB of random data per new VM disk (default: 16)")
    lab.add_argument("--install", action="store_true", help="apt-get install the lab's packages first")
    lab.set_defaults(func=lab_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuntimeError as err:
        print("vmbackup: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
