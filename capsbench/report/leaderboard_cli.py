"""``capsbench leaderboard add|remove|build|check``.

Exit codes: 0 done / up to date; 1 ``check`` found stale built files; 2 bad input (an invalid
or misplaced record, a conflict with a committed record, mixed protocols), one line naming
the file.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_STALE, EXIT_BAD_INPUT = 0, 1, 2


def add_commands(sub) -> dict:
    from capsbench.cli import debug_flag

    board = sub.add_parser(
        "leaderboard", help="add run records to the leaderboard, rebuild its tables and figures, or check them",
        description="The versioned depth-scalability leaderboard: records under ROOT/records, built files beside.",
    )
    debug_flag(board)
    actions = board.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="validate finished runs and add their records (never overwrites)")
    add.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories or folders of them (a sweep)")
    add.add_argument("--note", default=None, help="one line for the changelog entry")
    root_option(add)

    remove = actions.add_parser("remove", help="remove committed records (a reviewed correction; logged)")
    remove.add_argument("paths", nargs="+", metavar="RECORD", help="record files under ROOT/records")
    remove.add_argument("--note", required=True, help="why (goes into the changelog)")
    root_option(remove)

    build = actions.add_parser("build", help="rebuild tables, README table, HTML page and figures from the records")
    root_option(build)

    check = actions.add_parser("check", help="exit 1 when built files are stale, 2 when a record is invalid")
    root_option(check)
    for parser in (add, remove, build, check):
        debug_flag(parser)
    return {"leaderboard": cmd_leaderboard}


def root_option(parser) -> None:
    parser.add_argument("--root", default="leaderboard", help="the leaderboard folder (default: leaderboard)")


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from capsbench.report import leaderboard
    from capsbench.results import store

    root = Path(args.root)
    if args.action == "add":
        result = store.add(root, args.paths, note=args.note)
        for rel in result.added:
            print(f"added      {root / rel}")
        for rel in result.unchanged:
            print(f"unchanged  {root / rel}")
        print(f"{len(result.added)} added, {len(result.unchanged)} already there, {len(result.skipped)} unfinished "
              f"skipped; now run `capsbench leaderboard build --root {root}`")
        return EXIT_OK
    if args.action == "remove":
        for rel in store.remove(root, args.paths, args.note):
            print(f"removed    {root / rel}")
        return EXIT_OK
    if args.action == "build":
        written = leaderboard.build(root, log=print)
        for path in written:
            if path.exists():
                print(f"wrote      {path}")
        print(f"{root}: up to date ({len(written)} file(s) changed)")
        return EXIT_OK
    problems = leaderboard.check(root)
    for line in problems:
        print(f"stale: {line}", file=sys.stderr)
    if problems:
        print(f"{root}: {len(problems)} built file(s) out of date; run `capsbench leaderboard build --root {root}` "
              "and commit the result", file=sys.stderr)
        return EXIT_STALE
    print(f"{root}: records valid, built files up to date")
    return EXIT_OK
