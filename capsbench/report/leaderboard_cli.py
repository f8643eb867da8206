"""``capsbench leaderboard add|remove|build|check|verify|rerecord|diff``.

Exit codes: 0 done / up to date / every re-run metric agrees; 1 ``check`` found stale built
files, or ``verify`` found a metric that differs from its record (one line each: record, metric,
both values) or a shipped routing without ``ci`` records; 2 bad input (an invalid or misplaced
record, a conflict with a committed record, mixed protocols, a record whose config no longer
hashes to its spec hash), one line naming the file.
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

    verify = actions.add_parser(
        "verify", help="re-run committed records and compare every metric (default: the whole ci protocol)")
    verify.add_argument("records", nargs="*", metavar="RECORD", help="record files to re-run (default: --protocol's)")
    verify.add_argument("--protocol", default="ci", help="the protocol whose records are re-run (default: ci)")
    verify.add_argument("--sample", type=int, default=None, help="re-run N records, a deterministic choice")
    jobs_and_out(verify)
    root_option(verify)

    rerecord = actions.add_parser(
        "rerecord", help="re-run a protocol's sweep specs and replace the records that changed (logged, with --note)")
    rerecord.add_argument("--protocol", default="ci", help="the protocol to re-record (default: ci)")
    rerecord.add_argument("--specs", nargs="+", default=None,
                          help="its sweep specs (default: specs/<protocol>/); when named, only the records of the "
                               "methods they produce are replaced")
    rerecord.add_argument("--note", required=True, help="why the numbers change (goes into the changelog)")
    jobs_and_out(rerecord)
    root_option(rerecord)

    diff = actions.add_parser("diff", help="what a pending change does to the tables and ranks (for a PR description)")
    diff.add_argument("--base", default="HEAD", help="the git revision to compare with (default: HEAD)")
    root_option(diff)
    for parser in (add, remove, build, check, verify, rerecord, diff):
        debug_flag(parser)
    return {"leaderboard": cmd_leaderboard}


def jobs_and_out(parser) -> None:
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one CPU thread each (default: 1)")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a fresh temporary folder)")


def root_option(parser) -> None:
    parser.add_argument("--root", default="leaderboard", help="the leaderboard folder (default: leaderboard)")


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from capsbench.report import leaderboard
    from capsbench.results import store

    root = Path(args.root)
    if args.action in ACTIONS:
        return ACTIONS[args.action](root, args)
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


def cmd_verify(root, args) -> int:
    import tempfile
    from pathlib import Path

    from capsbench.cli import reexec_for_numerics
    from capsbench.registry import ROUTINGS
    from capsbench.rerun import rerun
    from capsbench.results import store, verify

    records = store.read_records(root)
    if args.records:
        chosen = sorted({_relative(root, raw, records) for raw in args.records})
    else:
        chosen = verify.select(records, args.protocol, args.sample)
    reexec_for_numerics({verify.mode_of(records[rel]) for rel in chosen})
    problems = verify.coverage(records, "ci", ROUTINGS.names()) if args.protocol == "ci" and not args.records else []
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="capsbench-verify-"))
    print(f"re-running {len(chosen)} record(s) in {out}", file=sys.stderr)
    fresh = rerun(records, chosen, out, args.jobs)
    skipped = 0
    for rel in chosen:
        lines, n = verify.compare(rel, records[rel], fresh[rel])
        problems += lines
        skipped += n
    for line in problems:
        print(line)
    note = f" ({skipped} metric(s) of native records from other machines not compared)" if skipped else ""
    if problems:
        print(f"verify: {len(problems)} mismatch(es) in {len(chosen)} record(s){note}. An intended change of numerics "
              f"is re-recorded with `capsbench leaderboard rerecord --protocol {args.protocol} --note WHY` "
              "(CONTRIBUTING.md, 'Re-record')", file=sys.stderr)
        return EXIT_STALE
    print(f"verify: {len(chosen)} record(s) re-run, every metric agrees{note}", file=sys.stderr)
    return EXIT_OK


def _relative(root, raw: str, records: dict) -> str:
    from pathlib import Path

    from capsbench.errors import UserError

    path = Path(raw)
    try:
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        rel = path.as_posix()
    if rel not in records:
        raise UserError(f"{raw}: not a record of the leaderboard at {root} (expected a file under {root}/records)")
    return rel


def cmd_rerecord(root, args) -> int:
    from pathlib import Path

    from capsbench.cli import reexec_for_numerics
    from capsbench.errors import UserError
    from capsbench.report import leaderboard
    from capsbench.rerun import PROTOCOL_SPECS, rerecord, sweep_runs

    if args.specs is None and args.protocol not in PROTOCOL_SPECS:
        raise UserError(f"--specs: protocol {args.protocol} has no default sweep specs; name them")
    specs = [Path(p) for p in (args.specs or [PROTOCOL_SPECS[args.protocol]])]
    reexec_for_numerics({str(run.config.numerics) for run in sweep_runs(args.protocol, specs)})
    done = rerecord(root, args.protocol, specs, args.note, args.jobs, Path(args.out) if args.out else None,
                    only_their_methods=args.specs is not None)
    leaderboard.build(root)
    print(f"{len(done.removed)} record(s) removed, {len(done.added)} added, {len(done.unchanged)} unchanged "
          f"(runs in {done.out}); {root} rebuilt: commit it with the note in the message")
    return EXIT_OK


def cmd_diff(root, args) -> int:
    from capsbench.report.leaderboard_diff import diff_against

    for line in diff_against(root, args.base):
        print(line)
    return EXIT_OK


ACTIONS = {"verify": cmd_verify, "rerecord": cmd_rerecord, "diff": cmd_diff}
