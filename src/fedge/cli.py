"""The fedge command line: run, compare, list, report, schedule, partition-model."""

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
    _add_schedule(sub)
    _add_partition_model(sub)
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


SCHEDULE_ALGORITHMS = "atsa,atsa_paper,aco,fcfs,pso,minmin,maxmin,sufferage,lpt"


def _add_schedule(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sch = sub.add_parser(
        "schedule",
        help="compare task schedulers (ATSA, ACO, FCFS, PSO, Min-Min, LPT, MILP, ...)",
        description="Schedule independent tasks on heterogeneous nodes and report makespan, "
        "total execution time, load imbalance ((max - min) / mean node completion time), "
        "scheduler run time and the gap to a proven lower bound (LP relaxation, or the MILP's "
        "dual bound when milp runs). Times are seconds of the generated ETC matrix.",
    )
    sch.add_argument(
        "--tasks",
        type=int,
        default=200,
        help="tasks per instance, or per stream with --window (default: 200)",
    )
    sch.add_argument("--nodes", default="10,20,30", help="node counts, e.g. 10,20,30")
    sch.add_argument(
        "--algorithms",
        default=SCHEDULE_ALGORITHMS,
        help=f"comma-separated, from {SCHEDULE_ALGORITHMS},milp (default: all but milp)",
    )
    sch.add_argument("--seeds", type=int, default=1, help="instances per setting (default: 1)")
    sch.add_argument(
        "--etc", default="consistent", help="consistent, inconsistent or both, comma-separated"
    )
    sch.add_argument("--window", type=int, help="schedule a Poisson stream in windows of W tasks")
    sch.add_argument(
        "--load", type=float, default=0.9, help="offered load of the stream (default: 0.9)"
    )
    sch.add_argument(
        "--milp-time-limit", type=float, default=10.0, help="seconds per MILP (default: 10)"
    )
    sch.add_argument("--json", action="store_true", help="one JSON object per line and run")


def _add_partition_model(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pm = sub.add_parser(
        "partition-model",
        help="TMOA: choose where to split a DNN between the edge pool and the cloud",
        description="Profile a model block by block and choose the cut under the memory "
        "(C1), latency (C2, M/M/1 or M/M/N waiting) and energy (C3) constraints, for every "
        "edge count and edge-to-cloud bandwidth. Exact: every cut is enumerated.",
    )
    pm.add_argument("--model", default="resnet34", help="a registered model (default: resnet34)")
    pm.add_argument("--input", default="3x224x224", help="input shape C x H x W")
    pm.add_argument("--classes", type=int, default=10, help="output classes (default: 10)")
    pm.add_argument("--edges", default="10,20,30", help="edge counts, e.g. 10,20,30")
    pm.add_argument("--bandwidth-mbps", default="20", help="edge-to-cloud Mbit/s, e.g. 1,10,100")
    pm.add_argument("--objective", default="latest", choices=["latest", "latency", "energy"])
    pm.add_argument("--queue", default="mmn", choices=["mm1", "mmn"], help="waiting-time model")
    pm.add_argument("--arrival-rate", type=float, default=50.0, help="tasks/s over all edges")
    pm.add_argument("--max-latency-ms", type=float, default=1000.0, help="T_max per task")
    pm.add_argument("--max-power-w", type=float, default=10.0, help="E: watts per edge node")
    pm.add_argument("--edge-gflops", type=float, default=20.0, help="GFLOP/s per edge node")
    pm.add_argument("--edge-memory-mib", type=float, default=512.0, help="P0, MiB")
    pm.add_argument("--static-power-w", type=float, default=5.0, help="edge static power")
    pm.add_argument("--cloud-gflops", type=float, default=10000.0, help="cloud GFLOP/s")
    pm.add_argument("--uplink-mbps", type=float, default=50.0, help="device-to-edge Mbit/s")
    pm.add_argument("--curves", action="store_true", help="print memory/latency/power per cut")
    pm.add_argument("--plots", help="write memory.png, latency.png, energy.png to this folder")
    pm.add_argument("--json", action="store_true", help="one JSON object per line and result")


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


def cmd_schedule(args: argparse.Namespace) -> int:
    import json

    from fedge.experiment.edge_tools import schedule_study, schedule_table
    from fedge.orchestration.scheduling import compare_schedulers

    study = schedule_study(args)
    rows = []
    for row in compare_schedulers(study):
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(schedule_table(rows))
    return 0


def cmd_partition_model(args: argparse.Namespace) -> int:
    import json

    from fedge.experiment.edge_tools import curve_table, partition_inputs, partition_table
    from fedge.experiment.partition_model import (
        curve_rows,
        model_layers,
        parse_input_shape,
        partition_model,
        plot_curves,
    )

    pool, work, edges, bandwidths = partition_inputs(args)
    layers = model_layers(args.model, parse_input_shape(args.input), args.classes)
    results = partition_model(layers, pool, work, edges, bandwidths, args.objective)
    if args.json:
        for result in results:
            print(json.dumps(result))
    else:
        print(partition_table(results))
    if args.curves or args.plots:
        curves = curve_rows(layers, pool, work, edges)
        if args.curves and not args.json:
            print(curve_table(curves))
        if args.plots:
            for path in plot_curves(curves, Path(args.plots)):
                print(f"plot: {path}", file=sys.stderr)
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
        if args.command == "schedule":
            return cmd_schedule(args)
        if args.command == "partition-model":
            return cmd_partition_model(args)
        return cmd_report(args.run_dir)
    except FedgeError as exc:
        print(f"fedge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
