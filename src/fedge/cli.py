"""The fedge command line: run, compare, list, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.core.errors import FedgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run one experiment from a TOML config")
    run.add_argument("config", help="path to the experiment TOML file")
    _add_set(run, "override a config key (dotted), repeatable")
    run.add_argument("--out", help="parent directory of the run directory (default: runs/)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    lst = sub.add_parser("list", help="list algorithms, datasets, partitioners, models, ...")
    lst.add_argument(
        "what",
        nargs="?",
        default="all",
        help="one of all, algorithms, datasets, partitioners, models, aggregators, "
        "server-optimizers, interserver-rules",
    )
    _add_compare(sub)
    rep = sub.add_parser("report", help="rebuild the plots and report.html of a run")
    rep.add_argument("run_dir", help="a run directory written by `fedge run`")
    return p


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmp = sub.add_parser("compare", help="run variants of a config over several seeds")
    cmp.add_argument("config", help="path to the experiment TOML file")
    cmp.add_argument(
        "--vary",
        dest="varies",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a config key (dotted) and the values to try, repeatable: every combination runs",
    )
    cmp.add_argument("--seeds", type=int, default=1, help="seeds per variant (default: 1)")
    _add_set(cmp, "override a config key (dotted) in every variant, repeatable")
    cmp.add_argument("--out", help="parent of the comparison directory (default: output.dir)")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _registries() -> dict[str, list[tuple[str, str]]]:
    from fedge.aggregation import AGGREGATORS, INTERSERVER, SERVER_OPTIMIZERS
    from fedge.algorithms import ALGORITHMS
    from fedge.learning import DATASETS, MODELS, PARTITIONERS

    return {
        "algorithms": ALGORITHMS.describe(),
        "datasets": DATASETS.describe(),
        "partitioners": PARTITIONERS.describe(),
        "models": MODELS.describe(),
        "aggregators": AGGREGATORS.describe(),
        "server-optimizers": SERVER_OPTIMIZERS.describe(),
        "interserver-rules": INTERSERVER.describe(),
    }


def cmd_list(what: str) -> int:
    regs = _registries()
    if what != "all" and what not in regs:
        raise FedgeError(f"list: got {what!r}; allowed: all, " + ", ".join(regs))
    for name, items in regs.items():
        if what in ("all", name):
            print(f"{name}:")
            width = max(len(n) for n, _ in items)
            for n, doc in items:
                print(f"  {n:<{width}}  {doc}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fedge.experiment.config import load_config
    from fedge.experiment.run import SUMMARY_KEYS, run_experiment
    from fedge.results import format_table, human_bytes

    config = load_config(args.config, args.overrides)
    result = run_experiment(config, out_dir=args.out, progress=False if args.no_progress else None)
    s = result.summary
    print(format_table([s], [c for c in SUMMARY_KEYS if c in s and not c.startswith("bytes")]))
    tiers = sorted(k for k in s if k.startswith(("bytes_up_", "bytes_down_", "bytes_peer_")))
    print(
        format_table(
            [{k.removeprefix("bytes_"): human_bytes(s[k]) for k in tiers}],
            [k.removeprefix("bytes_") for k in tiers],
        )
    )
    print(f"report: {result.run_dir / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedge.experiment.compare import run_comparison

    result = run_comparison(
        args.config,
        args.varies,
        args.seeds,
        args.overrides,
        out=args.out,
        progress=False if args.no_progress else None,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.table())
    print(f"comparison: {result.report}")
    return 0


def cmd_report(run_dir: str) -> int:
    from fedge.results import rebuild_report

    print(f"report: {rebuild_report(Path(run_dir))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "list":
            return cmd_list(args.what)
        return cmd_report(args.run_dir)
    except FedgeError as exc:
        print(f"fedge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
