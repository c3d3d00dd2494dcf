"""The `vmbackup-lab` command: the development labs that the tests, the demo and the benchmarks use.

  vmbackup-lab lab up|down|status           the local zfs-fuse lab
  vmbackup-lab netlab up|down|status        a lab of separate nodes (namespaces, own zfs-fuse and sshd each)
  vmbackup-lab ozlab up|down|status|image   a lab of QEMU guests running OpenZFS 2.3, zvols as VM disks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from vmbackup_lab import lab as labmod
from vmbackup_lab import netlab, ozlab


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


def netlab_command(args: argparse.Namespace) -> int:
    # What up was given earlier (kept in DIR) holds unless given again.
    the_lab = netlab.NetLab.load(args.dir)
    given = {"prefix": args.prefix, "subnet": args.subnet, "pool": args.pool, "pool_size": args.size,
             "nodes": netlab.parse_nodes(args.node) if args.node else None}
    if args.action == "up":
        the_lab = dataclasses.replace(the_lab, **{k: v for k, v in given.items() if v is not None})
        the_lab.up(data_mb=args.data_mb)
        print(the_lab.status())
        return 0
    if args.action == "down":
        the_lab.down()
    else:
        print(the_lab.status())
    return 0


def ozlab_command(args: argparse.Namespace) -> int:
    the_lab = ozlab.OpenZfsLab.load(args.dir)
    given = {"prefix": args.prefix, "subnet": args.subnet, "pool": args.pool, "pool_size": args.size,
             "accel": args.accel, "memory_mb": args.memory,
             "nodes": ozlab.parse_nodes(args.node) if args.node else None}
    if args.action == "up":
        the_lab = dataclasses.replace(the_lab, **{k: v for k, v in given.items() if v is not None})
        the_lab.up(data_mb=args.data_mb, boot_timeout=args.boot_timeout)
        print(the_lab.status())
    elif args.action == "image":
        image = ozlab.ensure_image(the_lab.cache)
        print("%s\n%s" % (image.folder, json.dumps(image.manifest, indent=1)))
    elif args.action == "down":
        the_lab.down()
    else:
        print(the_lab.status())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmbackup-lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    netlab = sub.add_parser("netlab", help="a lab of separate nodes: own network and mount namespace, zfs-fuse, sshd",
                            description="Create (up), show (status) or remove (down) a lab whose nodes are reached "
                            "by address and ssh only; the inventory is written to DIR/hosts.yml. Idempotent; down "
                            "and status use the settings up kept in DIR.")
    netlab.add_argument("action", choices=["up", "down", "status"])
    netlab.add_argument("--dir", default="/var/tmp/vmbackup-netlab", help="the lab's folder (default: %(default)s)")
    netlab.add_argument("--node", action="append", metavar="ROLE:NAME",
                        help="a node, ROLE compute or backup; repeat (default: compute:netlab-compute "
                             "backup:netlab-backup)")
    netlab.add_argument("--prefix", help="names of namespaces, bridge and links (default: vbnl)")
    netlab.add_argument("--subnet", help="the nodes' /24; this host is .1 (default: 10.77.0)")
    netlab.add_argument("--pool", help="the pool every node has (default: zones)")
    netlab.add_argument("--size", help="size of each pool file (default: 1G)")
    netlab.add_argument("--data-mb", type=int, default=16, help="MiB of random data per new VM disk (default: 16)")
    netlab.set_defaults(func=netlab_command)

    oz = sub.add_parser(
        "ozlab", help="a lab of QEMU guests running OpenZFS 2.3 (zvols as VM disks), reached by ssh",
        description="Build the guest image once from Debian's packages (image; cached by package versions "
        "under /var/cache/vmbackup/openzfs-lab), boot the guests and make their pools and VM zvols (up), show "
        "them (status) or stop them and remove the lab's folder, taps and bridge (down). The inventory is "
        "written to DIR/hosts.yml. Idempotent; down and status use the settings up kept in DIR. A cold build "
        "takes about 6 minutes, a boot under software emulation (TCG) about 40 s.")
    oz.add_argument("action", choices=["up", "down", "status", "image"])
    oz.add_argument("--dir", default=os.environ.get("VMBACKUP_OZLAB_DIR", "/var/tmp/vmbackup-ozlab"),
                    help="the lab's folder (default: %(default)s)")
    oz.add_argument("--node", action="append", metavar="ROLE:NAME",
                    help="a guest, ROLE compute or backup; repeat (default: compute:oz-compute backup:oz-backup)")
    oz.add_argument("--prefix", help="names of the bridge and taps (default: vboz)")
    oz.add_argument("--subnet", help="the guests' /24; this host is .1 (default: 10.79.0)")
    oz.add_argument("--pool", help="the pool every guest has (default: zones)")
    oz.add_argument("--size", help="size of each guest's pool disk (default: 2G)")
    oz.add_argument("--memory", type=int, help="MiB of memory per guest (default: 1536)")
    oz.add_argument("--accel", choices=["auto", "kvm", "tcg"],
                    help="auto: KVM when it runs the guest, else TCG (default: auto)")
    oz.add_argument("--data-mb", type=int, default=16, help="MiB of random data per new VM zvol (default: 16)")
    oz.add_argument("--boot-timeout", type=float, default=600,
                    help="seconds to wait for a guest's ssh (default: %(default)s)")
    oz.set_defaults(func=ozlab_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except RuntimeError as err:
        print("vmbackup-lab: %s" % err, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
