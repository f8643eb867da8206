"""``capsbench report RUN_OR_SWEEP_DIR... [--out DIR] [--epochs first,last] [--split val]``.

``--questions long-cpu`` answers that protocol's pre-registered questions instead
(``questions_write.py``: questions.md, questions.json and figures); ``--questions remedies`` gives the
remedies verdicts of docs/remedies.md (``remedies_write.py``: remedies.md, remedies.json, figures).
``--plan SPEC...`` names the sweep specs whose planned runs it checks for (default: specs/long/ or
specs/remedies/ of this checkout; ``none``: no plan). ``--records DIR`` (remedies only): leaderboard records stand
in for run folders that were not kept.
"""

from __future__ import annotations

QUESTION_SETS = ("long-cpu", "remedies")


def _question_set(name: str):
    """(writer, default plan) of a set of pre-registered questions; imported only when asked for."""
    if name == "remedies":
        from capsbench.report.remedies_verdicts import default_plan
        from capsbench.report.remedies_write import write_remedy_verdicts

        return write_remedy_verdicts, default_plan
    from capsbench.report.questions import default_plan
    from capsbench.report.questions_write import write_questions

    return write_questions, default_plan


def add_commands(sub) -> dict:
    from capsbench.cli import debug_flag

    report = sub.add_parser(
        "report",
        help="figures (accuracy and dead capsules vs depth, activation grids, gradient norms) from saved runs",
        description="Draw the paper's figures from saved run directories (no re-training) and an index.html.",
    )
    report.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run directories or folders of them")
    report.add_argument("--out", default=None, help="output folder (default: <first path>/report)")
    report.add_argument("--epochs", default="first,last",
                        help="epochs of the activation grids: first,last (default), e.g. 1,5, or all")
    report.add_argument("--split", default="val", choices=("val", "test"),
                        help="activations of the validation epochs (default, as in the paper) or the test epoch")
    report.add_argument("--questions", default=None, metavar="PROTOCOL",
                        help="answer pre-registered questions: long-cpu (questions.md, questions.json, figures) or "
                             "remedies (the verdicts of docs/remedies.md: remedies.md, remedies.json, figures)")
    report.add_argument("--plan", nargs="+", default=None, metavar="SPEC",
                        help="with --questions: the sweep specs that plan the runs (default: specs/long/*.yaml or "
                             "specs/remedies/*.yaml of this checkout); lists the planned runs that are missing and "
                             "excludes unplanned ones; "
                             "'none': no plan")
    report.add_argument("--records", default=None, metavar="DIR",
                        help="with --questions remedies: a folder of leaderboard records (e.g. "
                             "leaderboard/records/long-cpu/v1) read for runs that have no finished folder here "
                             "(final metrics only; marked in the tables)")
    debug_flag(report)
    return {"report": cmd_report}


def cmd_report(args) -> int:
    from pathlib import Path

    from capsbench.errors import UserError
    from capsbench.report.write import write_report

    if args.questions is not None:
        return _questions(args)
    if args.plan is not None:
        raise UserError("--plan: only with --questions (e.g. --questions long-cpu)")
    if args.records is not None:
        raise UserError("--records: only with --questions remedies")
    written = write_report([Path(p) for p in args.paths], Path(args.out) if args.out else None,
                           epochs=args.epochs, split=args.split)
    index = written[-1]
    print(f"wrote {len(written) - 1} figure(s) and {index}")
    return 0


def _questions(args) -> int:
    from pathlib import Path

    from capsbench.errors import UserError

    if args.questions not in QUESTION_SETS:
        raise UserError(f"--questions: expected one of {', '.join(QUESTION_SETS)}, got '{args.questions}'")
    write, default_plan = _question_set(args.questions)
    plan = [Path(p) for p in args.plan] if args.plan else default_plan()
    plan = [] if args.plan == ["none"] else plan
    for path in plan:
        if not path.is_file():
            raise UserError(f"--plan: {path} is not a spec file")
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    if args.records is not None and args.questions != "remedies":
        raise UserError(f"--records: only with --questions remedies, not with --questions {args.questions}")
    extra = {"records": Path(args.records)} if args.records is not None else {}
    written = write([Path(p) for p in args.paths], out, plan, **extra)
    print(f"wrote {len(written) - 2} figure(s), {written[-2]} and {written[-1]}")
    return 0
