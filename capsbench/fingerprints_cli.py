"""``capsbench fingerprints check|record``: the routing fingerprints (``capsbench/fingerprints.py``).

Exit codes: 0 every fingerprint agrees (``check``) or was written (``record``); 1 a fingerprint
differs or is missing, one line each naming the routing, and the command that re-records it;
2 bad input (unknown routing, a changed fingerprint without ``--note``).
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_MISMATCH = 0, 1


def add_commands(sub) -> dict:
    from capsbench.cli import debug_flag

    parser = sub.add_parser(
        "fingerprints", help="check or re-record the routing fingerprints (float64 outputs and gradients)",
        description="Every registered routing on a fixed tiny float64 input, forward and backward, against the "
                    "values committed under DIR.",
    )
    debug_flag(parser)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="compare every routing (or the named ones) with its committed fingerprint")
    record = actions.add_parser("record", help="write fingerprints; a changed one needs --note (kept in its history)")
    record.add_argument("--note", default=None, help="why the numerics changed, or 'new routing NAME'")
    for p in (check, record):
        p.add_argument("routings", nargs="*" if p is check else "+", metavar="ROUTING")
        p.add_argument("--dir", default=None, help="the fingerprint folder (default: leaderboard/fingerprints)")
        debug_flag(p)
    return {"fingerprints": cmd_fingerprints}


def cmd_fingerprints(args) -> int:
    from pathlib import Path

    from capsbench import fingerprints
    from capsbench.env import git_commit
    from capsbench.registry import ROUTINGS
    from capsbench.results.ledger import today

    folder = Path(args.dir) if args.dir else fingerprints.FOLDER
    for name in args.routings:
        ROUTINGS.check(name, "ROUTING")
    if args.action == "record":
        for line in fingerprints.record(folder, args.routings, args.note, today(), git_commit()):
            print(line)
        return EXIT_OK
    problems = fingerprints.check(folder, args.routings or None)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} fingerprint problem(s). If the change of numerics is intended, re-record: "
              f"{fingerprints.record_command('ROUTING...')}, and re-record the ci records "
              "(CONTRIBUTING.md, 'Re-record')", file=sys.stderr)
        return EXIT_MISMATCH
    print(f"fingerprints: {len(args.routings or ROUTINGS.names())} routing(s) agree with {folder}")
    return EXIT_OK
