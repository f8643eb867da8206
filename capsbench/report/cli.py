"""``capsbench report RUN_OR_SWEEP_DIR... [--out DIR] [--epochs first,last] [--split val]``."""

from __future__ import annotations


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
    debug_flag(report)
    return {"report": cmd_report}


def cmd_report(args) -> int:
    from pathlib import Path

    from capsbench.report.write import write_report

    written = write_report([Path(p) for p in args.paths], Path(args.out) if args.out else None,
                           epochs=args.epochs, split=args.split)
    index = written[-1]
    print(f"wrote {len(written) - 1} figure(s) and {index}")
    return 0
