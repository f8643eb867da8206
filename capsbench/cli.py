"""The ``capsbench`` command.

Exit codes: 0 success; 1 a run failed (the others still finished); 2 bad input
(spec, arguments, missing data, corrupt file) or an output folder that cannot be
written (a file in the way, permissions, a full disk: nothing is recorded, the same
command resumes once fixed) with a one-line message; 75 every run this command could
train finished, but others were in progress in another process and were skipped (run
again later to collect them); 130 interrupted. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from capsbench.errors import UserError, did_you_mean
from capsbench.runlock import BUSY, EXIT_BUSY

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
_AS_CONSOLE_COMMAND = False  # set by main(): True when started as `capsbench`, so re-executing is safe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsbench", description="How capsule networks scale with depth: run, validate and compare specs."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every run of a spec (finished runs are skipped, interrupted ones resume)")
    run.add_argument("spec", help="a YAML spec, e.g. specs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override spec keys, e.g. train.epochs=2")
    run.add_argument("--out", help="folder for run directories (default: output.dir of the spec, 'runs')")
    run.add_argument("--executor", default=None, help="where runs execute (default: executor.name, 'local')")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--jobs", type=int, default=None, help="runs at once (default: executor.jobs)")
    run.add_argument("--retry-failed", action="store_true", help="run failed/oom runs again (old record kept aside)")
    run.add_argument(
        "--skip-recorded", metavar="DIR",
        help="leave out runs that have a leaderboard record under DIR (e.g. leaderboard/records/long-cpu/v1), "
             "folder or not: a native-numerics run trained again on another CPU is a new result",
    )
    debug_flag(run)

    validate = sub.add_parser("validate", help="validate spec files or folders of specs, with the overrides of run")
    validate.add_argument(
        "paths", nargs="+", metavar="SPEC_OR_DIR [key=value ...]",
        help="spec files or folders (searched for *.yaml), then overrides as `run` takes them",
    )
    validate.set_defaults(overrides=[])
    debug_flag(validate)

    lister = sub.add_parser("list", help="list registered components, one name per line")
    lister.add_argument("kind", help="routings, models, backbones, datasets, losses, metrics, optimizers or schedulers")
    debug_flag(lister)

    prepare = sub.add_parser("prepare", help="download and verify every data set a spec needs (for offline nodes)")
    prepare.add_argument("spec")
    prepare.add_argument("overrides", nargs="*", metavar="key=value")
    debug_flag(prepare)
    bench = sub.add_parser("bench", help="step time and peak memory of every run of a spec (JSON lines)")
    bench.add_argument("spec")
    bench.add_argument("overrides", nargs="*", metavar="key=value")
    bench.add_argument("--steps", type=int, default=5, help="timed steps per run (median reported)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    bench.add_argument("--phase", default="train",
                       help="train (default: one optimiser step per batch) or eval (one evaluation batch, "
                            "train.eval_batch_size, as the runner evaluates)")  # fmt: skip
    debug_flag(bench)
    for module in COMMAND_MODULES:  # commands that live beside the code they drive
        for name, func in importlib.import_module(module).add_commands(sub).items():
            COMMANDS[name] = func
    return parser


# Modules with ``add_commands(subparsers) -> {name: func(args) -> exit code}``; kept free of
# heavy imports at module level so `capsbench --help` stays fast.
COMMAND_MODULES: list[str] = [
    "capsbench.executors.status", "capsbench.report.leaderboard_cli", "capsbench.report.cli",
    "capsbench.fingerprints_cli",
]


def debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` accepted after the subcommand too (``capsbench run x --debug``)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def cmd_bench(args) -> int:
    from capsbench.bench import PHASES, bench_spec

    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps: expected an integer >= 1 (and --warmup >= 0)")
    if args.phase not in PHASES:
        raise UserError(f"--phase: expected one of {', '.join(PHASES)}, got {args.phase!r}")
    results = bench_spec(args.spec, args.overrides, steps=args.steps, warmup=args.warmup, phase=args.phase)
    return EXIT_OK if all("error" not in r for r in results) else EXIT_RUN_FAILED


def cmd_run(args) -> int:
    from capsbench import api

    runs, out = api.plan(args.spec, args.overrides, args.out, out_key="--out", skip_recorded=args.skip_recorded)
    if not runs:  # every run has a leaderboard record (--skip-recorded)
        return EXIT_OK
    reexec_for_numerics({str(run.config.numerics) for run in runs})
    records = api.execute(
        runs, out, executor=args.executor, quiet=args.quiet, jobs=args.jobs, retry_failed=args.retry_failed
    )
    from capsbench.summary import print_summary

    print_summary(records)
    if not args.quiet:
        print(f"figures: capsbench report {out / str(runs[0].config.name)}", file=sys.stderr)
    return run_exit_code([str(r.get("status")) for r in records])


def run_exit_code(statuses: list[str]) -> int:
    """1 when a run did not end ok; else 75 when another process was training some of them; else 0."""
    if any(s not in ("ok", BUSY) for s in statuses):
        return EXIT_RUN_FAILED
    return EXIT_BUSY if BUSY in statuses else EXIT_OK


def reexec_for_numerics(modes: set[str]) -> None:
    """Start again with the variables the ``numerics`` modes need (ATen and MKL read them at process start).

    Only as the console command: a call of ``main`` from Python (tests) is never replaced; its
    runs then stop with a message naming the variables.
    """
    from capsbench import numerics

    missing: dict[str, str] = {}
    for mode in sorted(modes):
        missing.update(numerics.missing_env(mode))
    if missing and _AS_CONSOLE_COMMAND:
        from capsbench.malloc import reexec

        reexec(sys.argv[1:], missing)


def is_override(text: str) -> bool:
    """``key=value``: an override, not an option or an existing file (the one rule for every command)."""
    return "=" in text and not text.startswith("-") and not Path(text).exists()


def _spec_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.yaml") if not p.name.startswith(".")))
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such spec file or folder")
    return files


def cmd_validate(args) -> int:
    from capsbench import spec

    overrides = [a for a in args.paths if is_override(a)] + args.overrides
    files = _spec_files([a for a in args.paths if not is_override(a)])
    if not files:
        raise UserError(f"{', '.join(args.paths)}: no *.yaml spec files found")
    bad = 0
    for path in files:
        try:
            runs = spec.load(path, overrides)  # types, ranges, names and routing options: no torch
            print(f"ok     {path} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
        except UserError as exc:
            bad += 1
            print(f"error  {path}: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT if bad else EXIT_OK


def cmd_list(args) -> int:
    from capsbench.registry import REGISTRIES

    if args.kind not in REGISTRIES:
        raise UserError(
            f"list: unknown kind '{args.kind}'{did_you_mean(args.kind, REGISTRIES)}; "
            f"expected one of: {', '.join(REGISTRIES)}"
        )
    for name in REGISTRIES[args.kind].names():
        print(name)
    return EXIT_OK


def cmd_prepare(args) -> int:
    import json

    from omegaconf import OmegaConf

    from capsbench import spec
    from capsbench.data import prepare

    seen = set()
    for run in spec.load(args.spec, args.overrides):
        key = json.dumps(OmegaConf.to_container(run.config.data), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        for line in prepare(run.config.data):
            print(line)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run, "validate": cmd_validate, "list": cmd_list, "prepare": cmd_prepare, "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    global _AS_CONSOLE_COMMAND
    _AS_CONSOLE_COMMAND = argv is None
    if argv is None:  # the console command, not a call from Python: safe to re-execute
        from capsbench.malloc import reexec_if_untuned

        reexec_if_untuned(sys.argv[1:])
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`run SPEC --out DIR a=1`); argparse stops at the option
    if extra:
        if hasattr(args, "overrides") and all(is_override(e) for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted: finished epochs are saved; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
