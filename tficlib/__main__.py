"""Command line: ``python -m tficlib <command>`` (also installed as ``tfic``).

Exit codes: 0 success, 2 bad usage or bad input, 1 anything else; errors are
printed to stderr on one line.
"""

from __future__ import annotations

import argparse
import sys

from . import config

__all__ = ["main"]


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


def _cmd_run(args) -> int:
    from .runner import run_pipeline

    run_pipeline(args.profile, args.first, args.last, overrides=config.parse_assignments(args.set),
                 dry_run=args.dry_run, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the notebook pipeline with papermill")
    p.add_argument("--profile", default=None, help="smoke | cpu | paper | auto (default: $TFIC_PROFILE or auto)")
    p.add_argument("--from", dest="first", default=None, help="first notebook prefix, e.g. 00")
    p.add_argument("--to", dest="last", default=None, help="last notebook prefix, e.g. 06")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change an amount, e.g. --set codec.base_steps=10 (repeatable; JSON values); "
                        "the run becomes the variant 'custom' in data/<profile>-custom/")
    p.add_argument("--seed", type=int, default=None,
                   help="a training seed other than the profile's: the variant 'seed<N>' in data/<profile>-seed<N>/; "
                        "the earlier stages the run reads are linked from the profile's own run (same data, same earlier models)")
    p.add_argument("--dry-run", action="store_true",
                   help="the whole chain at the profile's shapes with a few images and steps per stage "
                        "(variant 'dryrun', data/<profile>-dryrun/): check a GPU machine before the long run; "
                        "ends with an estimate of the full run's training time")
    p.set_defaults(func=_cmd_run)

    from . import cli_codec, cli_train, kit

    cli_train.add_command(sub)
    kit.add_command(sub)
    cli_codec.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except (UsageError, config.UnknownProfile, ValueError, FileNotFoundError) as exc:  # KitError is a ValueError
        print(f"tfic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfic: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line on stderr, exit 1
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tfic: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
