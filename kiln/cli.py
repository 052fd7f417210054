"""The command line: the only place that parses arguments and maps errors to exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.errors import EXIT_INTERNAL, EXIT_INVALID, ConfigError, KilnError, Terminated

CRASH_LOG_ENV = "KILN_CRASH_LOG"


def crash_log_path() -> Path:
    """Where an internal error's traceback goes: $KILN_CRASH_LOG or ~/.cache/kiln/crash.log."""
    if os.environ.get(CRASH_LOG_ENV):
        return Path(os.environ[CRASH_LOG_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "kiln" / "crash.log"


def default_jobs() -> int:
    """One image per core, plus one: an export waits on the engine part of the time."""
    return (os.cpu_count() or 1) + 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"kiln: error: {message}\n")
        raise SystemExit(EXIT_INVALID)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bake.py", description="kiln: side-load foundation images into "
                     "air-gapped nodes under their exact registry names. See README.md.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--env", help="the environment in images.yaml")
    common.add_argument("--config", default="images.yaml", help="default: %(default)s")
    with_dist = _Parser(add_help=False, parents=[common])
    with_dist.add_argument("--dist", help="where the locks and rendered files are "
                                          "(default: dist/ beside images.yaml)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _day1(commands, common, with_dist)
    _day2(commands, with_dist)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _day1(commands: Any, common: argparse.ArgumentParser,
          with_dist: argparse.ArgumentParser) -> None:
    """lint, bake, render: from images.yaml to what nodes run."""

    lint = commands.add_parser("lint", parents=[common],
                               help="config, naming rules and chart alignment")
    lint.add_argument("--format", choices=("text", "json"), default="text")
    lint.add_argument("--lock", help="also report where each chart image comes from on a "
                                     "cold node (e.g. dist/prod/images.lock.json)")

    bake = commands.add_parser("bake", parents=[with_dist],
                               help="build/pull/archive, save, compress, publish, lock")
    bake.add_argument("--jobs", type=int, default=default_jobs(),
                      help="images exported and compressed at once (default: cores + 1 = "
                           "%(default)s)")
    bake.add_argument("--quiet", action="store_true", help="print errors only")
    bake.add_argument("--rebind", action="append", default=[], metavar="REF",
                      help="move REF to new content on purpose (a ref never moves otherwise; "
                           "recorded in the lock's history); repeat for each")
    bake.add_argument("--offline", action="store_true",
                      help="do not ask the registry whether it serves new refs already")
    bake.add_argument("--json", action="store_true", help="print the lock on stdout")
    bake.add_argument("--verify-store", action="store_true",
                      help="S3: read back and hash each object the bake reuses, where the "
                           "server kept no SHA-256 checksum (a dir store is always hashed)")
    golden_help = ("url_mode sigv4 with Packer sources: accept that the golden image carries "
                   "S3 credentials (refused otherwise)")
    bake.add_argument("--allow-credentials-in-golden-image", action="store_true",
                      help=golden_help)

    render = commands.add_parser("render", parents=[with_dist],
                                 help="cloud-init, per-node seeds, Packer build, node importer")
    render.add_argument("--inventory", help="nodes.yaml: write dist/<env>/nodes/<host>/ seeds")
    render.add_argument("--allow-credentials-in-golden-image", action="store_true",
                        help=golden_help)


def _day2(commands: Any, with_dist: argparse.ArgumentParser) -> None:
    """verify, push, verify-registry, diff, try, golden: checking and carrying the lock on."""
    verify = commands.add_parser("verify", parents=[with_dist],
                                 help="check a containerd against the lock")
    verify.add_argument("--containerd-address", required=True,
                        help="the containerd socket, e.g. /run/containerd/containerd.sock")
    verify.add_argument("--role", action="append", default=[], dest="roles",
                        help="a role of this node (repeat for each): only the images of its "
                             "roles; a name kiln pinned for another role counts as stale")
    verify.add_argument("--platform", help="the node's platform, os/arch[/variant] "
                                           "(default: this machine's)")
    verify.add_argument("--json", action="store_true")

    push = commands.add_parser("push", parents=[with_dist],
                               help="day 2: push the lock's images to the registry")
    push.add_argument("--quiet", action="store_true")
    push.add_argument("--json", action="store_true")
    vreg = commands.add_parser("verify-registry", parents=[with_dist],
                               help="day 2: the registry serves the lock's image IDs")
    vreg.add_argument("--json", action="store_true")

    diff = commands.add_parser("diff", parents=[with_dist],
                               help="what a bake would change; objects no lock references")
    diff.add_argument("--prune", action="store_true",
                      help="delete the unreferenced objects (only with --yes)")
    diff.add_argument("--yes", action="store_true")
    diff.add_argument("--grace", default="24h",
                      help="prune only objects and unfinished uploads older than this "
                           "(default %(default)s: a bake in flight has not written its lock)")
    diff.add_argument("--json", action="store_true", help="the same as --format json")
    diff.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                      help="markdown: release notes per role, from the lock and images.yaml "
                           "(or, with --since, from two locks); reads no store")
    diff.add_argument("--since", metavar="LOCK",
                      help="with --format markdown: the lock in force before (e.g. from git)")

    trial = commands.add_parser("try", parents=[with_dist],
                                help="boot a throwaway VM with the user-data, report the import")
    trial.add_argument("--base-image", required=True,
                       help="a bootable cloud image (qcow2/raw), or a root fs with --kernel")
    trial.add_argument("--role", help="render the user-data of this role only")
    trial.add_argument("--inventory", metavar="NODES_YAML",
                       help="with --node: boot that node's per-node seed over HTTP (PXE path)")
    trial.add_argument("--node", metavar="HOSTNAME", help="an inventory node's host name")
    trial.add_argument("--kernel", help="direct kernel boot")
    trial.add_argument("--initrd")
    trial.add_argument("--append", help="kernel command line (default: root=/dev/vda rw "
                                        "console=ttyS0)")
    trial.add_argument("--timeout", type=float, default=1200, help="seconds (default 1200)")
    trial.add_argument("--no-store", action="store_true",
                       help="serve no store: a golden image must already hold the images")
    trial.add_argument("--json", action="store_true")

    golden = commands.add_parser("golden", parents=[with_dist],
                                 help="build a golden VM image with packer, the store served")
    golden.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a packer variable (base_image, kernel, initrd, ssh_key, "
                             "output_dir); repeatable")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        return exc.exit_code
    except KilnError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            sys.stderr.write(f"kiln: error: {line}\n")
        return exc.exit_code
    except Terminated:
        sys.stderr.write("kiln: terminated; what was in flight was rolled back\n")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        sys.stderr.write("kiln: interrupted\n")
        return 130
    except Exception as exc:  # a bug: one line to the user, the traceback to a file
        log = crash_log_path()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f"traceback in {log}"
        except OSError:
            where = "could not write the traceback"
        sys.stderr.write(f"kiln: internal error: {type(exc).__name__}: {exc} ({where})\n")
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "lint":
        from kiln.commands.lint import lint

        return lint(args.config, args.env, args.format, lock_path=args.lock)
    if args.command == "bake":
        from kiln.commands.bake import bake

        return bake(args.config, args.env, dist=args.dist, jobs=args.jobs, quiet=args.quiet,
                    as_json=args.json, verify_store=args.verify_store,
                    allow_credentials_in_golden_image=args.allow_credentials_in_golden_image,
                    rebind=tuple(args.rebind), offline=args.offline)
    if args.command == "render":
        from kiln.commands.render import render_cmd

        return render_cmd(args.config, args.env, inventory=args.inventory, dist=args.dist,
                          allow_credentials_in_golden_image=(
                              args.allow_credentials_in_golden_image))
    if args.command == "verify":
        from kiln.commands.verify import verify_cmd

        return verify_cmd(args.config, args.env, address=args.containerd_address,
                          roles=args.roles, as_json=args.json, dist=args.dist,
                          platform=args.platform)
    if args.command == "push":
        from kiln.commands.day2 import push_cmd

        return push_cmd(args.config, args.env, dist=args.dist, quiet=args.quiet,
                        as_json=args.json)
    if args.command == "verify-registry":
        from kiln.commands.day2 import verify_registry_cmd

        return verify_registry_cmd(args.config, args.env, dist=args.dist, as_json=args.json)
    if args.command == "golden":
        from kiln.commands.golden import golden_cmd

        return golden_cmd(args.config, args.env, args.var, dist=args.dist)
    if args.command == "diff":
        from kiln.commands.diff import diff_cmd

        if args.format == "markdown" or args.since:
            from kiln.commands.diff import notes_cmd

            return notes_cmd(args.config, args.env, since=args.since, dist=args.dist,
                             markdown=args.format == "markdown" and not args.json
                             and not args.prune)
        return diff_cmd(args.config, args.env, prune=args.prune, yes=args.yes, grace=args.grace,
                        as_json=args.json or args.format == "json", dist=args.dist)
    if args.command == "try":
        from kiln.commands.try_ import try_cmd

        return try_cmd(args.config, args.env, base_image=args.base_image, role=args.role,
                       kernel=args.kernel, initrd=args.initrd, append=args.append,
                       timeout=args.timeout, no_store=args.no_store, as_json=args.json,
                       dist=args.dist, inventory=args.inventory, node=args.node)
    raise AssertionError(f"unhandled command {args.command}")
