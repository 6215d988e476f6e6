"""The fedge command line: run, compare, list, report, schedule, partition-model."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedge.core.errors import FedgeError

SET_HELP = (
    "override a config key (dotted path), repeatable; the value is TOML: numbers, true/false, "
    "'quoted strings', [arrays], {inline = tables} (a bare word is read as a string), e.g. "
    "--set rounds=5 --set data.partition='iid' --set federation.aggregator_params={f=1}"
)
RUN_EPILOG = """\
Every run writes runs/<run id>/ (config.json, versions.json with the data folder and file
hashes, metrics.csv, summary.json, plots/, report.html, checkpoint.pkl) and one row per round
into the run store, an SQLite file: output.store in the config (default runs/fedge.sqlite).
--out changes the folder of the run directories; output.tensorboard = true and
output.mlflow_uri = "mlruns" also log each round to TensorBoard and MLflow.
"""


def _version() -> str:
    import fedge

    return f"fedge {fedge.__version__}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedge",
        description="Federated and collaborative learning across devices, edge servers and "
        "the cloud, on a simulated clock, Ray or gRPC.",
        epilog="`fedge COMMAND --help` explains a command; `fedge list` shows every name a "
        "config can use.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run one experiment from a TOML config, or resume one",
        description="Run one experiment from a TOML config (see examples/quickstart.toml), "
        "or go on with an interrupted one.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", nargs="?", help="path to the experiment TOML file")
    _add_set(run, SET_HELP)
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with an interrupted run from its last checkpoint (its config.json is used)",
    )
    run.add_argument("--out", help="parent directory of the run directory (default: runs/)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--engine", help="local | ray | grpc, or an import path (shortcut for --set engine=...)"
    )
    run.add_argument("--ray-address", metavar="ADDR", help="shortcut for --set ray.address=...")
    lst = sub.add_parser(
        "list",
        help="list the names a config can use: algorithms, datasets, models, ... and recipes",
        description="List every registered name with its description and the config key "
        "that takes it. Every registry also takes your own object as 'package.module:attr'.",
    )
    lst.add_argument(
        "what",
        nargs="?",
        default="all",
        help="all (default), or one of: " + ", ".join(CATEGORIES),
    )
    _add_compare(sub)
    _add_schedule(sub)
    _add_partition_model(sub)
    _add_deployment(sub)
    rep = sub.add_parser(
        "report", help="rebuild the plots and report.html of a run from its directory"
    )
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
    _add_set(cmp, "in every variant: " + SET_HELP)
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


CATEGORIES = {
    "algorithms": "algorithm",
    "engines": "engine",
    "datasets": "data.dataset",
    "partitioners": "data.partition",
    "models": "model.name",
    "aggregators": "federation.aggregator",
    "server-optimizers": "federation.server_optimizer",
    "interserver-rules": "federation.interserver",
    "selectors": "federation.selection",
    "compressors": "[[compression]] method",
    "codecs": "wire forms of compressed updates (chosen by the compressor)",
    "studies": "study",
    "schedulers": "study_params.scheduler, fedge schedule --algorithms",
    "caching-policies": "caching.policy",
    "attacks": "[[attack]] kind",
    "privacy": "privacy.mechanism",
    "recipes": "examples/: configs and scripts that reproduce a paper's tables",
}
"""Each `fedge list` category and the config key (or command) that takes its names."""


def _registries() -> dict[str, list[tuple[str, str]]]:
    import fedge.studies  # noqa: F401  (importing it registers the built-in studies)
    from fedge.aggregation import AGGREGATORS, INTERSERVER, SERVER_OPTIMIZERS
    from fedge.algorithms import ALGORITHMS
    from fedge.algorithms.privacy import MECHANISMS
    from fedge.algorithms.selection import SELECTORS
    from fedge.caching import POLICIES
    from fedge.core.codec import CODECS
    from fedge.experiment.engines import ENGINES
    from fedge.learning import DATASETS, MODELS, PARTITIONERS
    from fedge.orchestration.scheduling import SCHEDULERS
    from fedge.runs.study import STUDIES
    from fedge.transforms import COMPRESSORS
    from fedge.transforms.attacks import ATTACKS

    registries: dict[str, Any] = {
        "algorithms": ALGORITHMS,
        "engines": ENGINES,
        "datasets": DATASETS,
        "partitioners": PARTITIONERS,
        "models": MODELS,
        "aggregators": AGGREGATORS,
        "server-optimizers": SERVER_OPTIMIZERS,
        "interserver-rules": INTERSERVER,
        "selectors": SELECTORS,
        "compressors": COMPRESSORS,
        "codecs": CODECS,
        "studies": STUDIES,
        "schedulers": SCHEDULERS,
        "caching-policies": POLICIES,
        "attacks": ATTACKS,
    }
    out = {name: reg.describe(full=True) for name, reg in registries.items()}
    out["privacy"] = list(MECHANISMS)
    out["recipes"] = _recipes()
    return out


def _recipes() -> list[tuple[str, str]]:
    """The recipe folders of the source tree's examples/ (first line of each README)."""
    root = Path(__file__).resolve().parents[2] / "examples"
    if not root.is_dir():
        return [("-", "the recipes ship with the source tree (examples/), not the package")]
    found = [(p.name, "the quickstart: FedAvg on Fashion-MNIST") for p in root.glob("*.toml")]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        readme = folder / "README.md"
        lines = readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else []
        title = next((ln.lstrip("# ").strip() for ln in lines if ln.strip()), "")
        configs = ", ".join(sorted(p.name for p in folder.glob("*.toml")))
        found.append((f"{folder.name}/", "; ".join(t for t in (title, configs) if t)))
    return found


def cmd_list(what: str) -> int:
    if what != "all" and what not in CATEGORIES:
        raise FedgeError(f"list: got {what!r}; allowed: all, " + ", ".join(CATEGORIES))
    regs = _registries()
    width = shutil.get_terminal_size((100, 24)).columns
    for name, items in regs.items():
        if what not in ("all", name):
            continue
        print(f"{name} ({CATEGORIES[name]}):")
        if not items:
            print("  (none)")
            continue
        col = max(len(n) for n, _ in items)
        for n, doc in items:
            _print_entry(n, doc, col, width)
        print()
    note = (
        "Besides these names, every registry takes your own object as 'package.module:attr' "
        "(e.g. model.name = 'mypkg.nets:Tiny', an nn.Module class or a function returning one)."
    )
    import textwrap

    print("\n".join(textwrap.wrap(note, max(40, width))))
    return 0


def _print_entry(name: str, doc: str, col: int, width: int) -> None:
    """``name  description``, the description wrapped under itself."""
    import textwrap

    indent = " " * (col + 4)
    text = " ".join(doc.split()) or "-"
    lines = textwrap.wrap(text, max(40, width - len(indent))) or ["-"]
    print(f"  {name:<{col}}  {lines[0]}")
    for line in lines[1:]:
        print(indent + line)


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides followed by the ``--engine`` / ``--ray-address`` shortcuts."""
    out = list(args.overrides)
    if args.engine is not None:
        out.append(f"engine={args.engine!r}")
    if args.ray_address is not None:
        out.append(f"ray.address={args.ray_address!r}")
    return out


def _check_resume_args(args: argparse.Namespace) -> None:
    """``--resume RUN_DIR`` stands alone: the run's config is the one stored with it."""
    if args.resume is None:
        if args.config is None:
            raise FedgeError("run: got no config; allowed: CONFIG.toml, or --resume RUN_DIR")
        return
    given = {
        "a config path": args.config is not None,
        "--set / --engine / --ray-address": bool(_run_overrides(args)),
        "--out": args.out is not None,
    }
    extra = [name for name, present in given.items() if present]
    if extra:
        raise FedgeError(
            f"run --resume: got {' and '.join(extra)} too; allowed: --resume RUN_DIR alone "
            "(the run goes on with the config stored in RUN_DIR/config.json)"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from fedge.experiment.config import load_config
    from fedge.runs.run import resume_experiment, run_experiment

    _check_resume_args(args)
    progress = False if args.no_progress else None
    if args.resume is not None:
        result = resume_experiment(args.resume, progress=progress, echo=_echo)
    else:
        config = load_config(args.config, _run_overrides(args))
        result = run_experiment(config, out_dir=args.out, progress=progress, echo=_echo)
    _print_summary(result.summary, result.run_dir)
    return 0


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    from fedge.results import format_table, human_bytes
    from fedge.runs.run import SUMMARY_KEYS

    if "steps" in s:  # a study: its own figures
        numbers = [k for k, v in s.items() if isinstance(v, int | float)]
        print(format_table([s], numbers))
        print(f"report: {run_dir / 'report.html'}")
        return
    print(format_table([s], [c for c in SUMMARY_KEYS if c in s and not c.startswith("bytes")]))
    tiers = sorted(k for k in s if k.startswith(("bytes_up_", "bytes_down_", "bytes_peer_")))
    print(
        format_table(
            [{k.removeprefix("bytes_"): human_bytes(s[k]) for k in tiers}],
            [k.removeprefix("bytes_") for k in tiers],
        )
    )
    if s.get("compression_ratio_up", 1.0) != 1.0:
        dense, sent = human_bytes(s["bytes_dense_up"]), human_bytes(s["bytes_up"])
        print(f"uplink: {sent} sent for {dense} dense ({s['compression_ratio_up']:.1f}x smaller)")
    print(f"report: {run_dir / 'report.html'}")


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from fedge.studies.compare import run_comparison

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

    from fedge.orchestration.scheduling import compare_schedulers
    from fedge.studies.edge_tools import schedule_study, schedule_table

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

    from fedge.studies.edge_tools import curve_table, partition_inputs, partition_table
    from fedge.studies.partition_model import (
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


def _add_deployment(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crt = sub.add_parser("certs", help="make a CA and node certificates for a test deployment")
    crt.add_argument("dir", help="where to write ca.pem and <node>.pem / <node>.key")
    crt.add_argument("--config", help="make certificates for every node of this experiment")
    crt.add_argument("--nodes", default="", help="comma-separated node ids (besides --config)")
    crt.add_argument(
        "--hosts", default="localhost,127.0.0.1,::1", help="names and addresses the servers use"
    )
    crt.add_argument(
        "--replace",
        default="",
        metavar="NODES",
        help="comma-separated node ids whose existing key and certificate are replaced "
        "(existing ones are otherwise kept)",
    )
    srv = sub.add_parser("serve", help="run one node of a gRPC deployment (cloud, edge, device)")
    srv.add_argument("role", choices=("cloud", "edge", "device"))
    srv.add_argument("--config", required=True, help="the experiment TOML (same on every node)")
    _add_set(srv, SET_HELP)
    srv.add_argument("--id", default="cloud", help="node id; devices: several, comma-separated")
    srv.add_argument("--listen", help="host:port to serve children on (cloud and edges)")
    srv.add_argument(
        "--parent",
        action="append",
        default=[],
        help="HOST:PORT or ID=HOST:PORT (then its certificate must name ID), repeatable",
    )
    tls = srv.add_mutually_exclusive_group()
    tls.add_argument("--certs", help="directory written by `fedge certs` (default: grpc.certs)")
    tls.add_argument("--insecure", action="store_true", help="no TLS (debugging only)")
    srv.add_argument("--out", help="cloud: parent of the run directory (default: output.dir)")
    srv.add_argument("--resume", metavar="RUN_DIR", help="cloud: go on from this run's checkpoint")
    srv.add_argument("--announce", help="cloud: write the run directory's path to this file")
    srv.add_argument("--state-dir", help="edge: where it checkpoints its state")
    srv.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a neighbour's address, repeatable: edge (msfl; decentralized relays) the edges "
        "it attaches to; device (system.d2d.mode = direct) its own devices (where it listens) "
        "and their peers",
    )
    dep = sub.add_parser("deploy-local", help="run a config as gRPC processes on loopback")
    dep.add_argument("config", help="path to the experiment TOML file")
    _add_set(dep, SET_HELP)
    dep.add_argument("--out", help="parent of the deployment directory (default: output.dir)")
    dep.add_argument("--certs", help="use these certificates instead of making new ones")
    dep.add_argument(
        "--devices-per-process", type=int, default=0, help="0: one process per edge's devices"
    )
    dep.add_argument(
        "--faults",
        type=int,
        default=0,
        metavar="N",
        help="inject N mixed network and process faults (link proxies, kill -9 and restart); "
        "the fault log goes to the run directory",
    )


def cmd_certs(args: argparse.Namespace) -> int:
    from fedge.deploy.local import node_ids_for_certs
    from fedge.runtime.grpc.tls import issue_certs

    nodes = node_ids_for_certs(args.config, args.nodes)
    replace = [n for n in args.replace.split(",") if n]
    hosts = [h for h in args.hosts.split(",") if h]
    report = issue_certs(args.dir, nodes, hosts, replace)
    for line in report.lines():
        print(line)
    print(f"certificates for {len(nodes)} nodes and their CA in {report.root}")
    return 0


def check_address(flag: str, value: str) -> None:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals) with a port in 0..65535."""
    host, sep, port = value.rpartition(":")
    allowed = "HOST:PORT with a port in 0..65535, e.g. 0.0.0.0:50051 or [::1]:50051"
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise FedgeError(f"{flag}: got {value!r}; allowed: {allowed}")
    if host.startswith("[") != host.endswith("]") or ("[" not in host and ":" in host):
        raise FedgeError(f"{flag}: got {value!r}; allowed: {allowed}")


def cmd_serve(args: argparse.Namespace) -> int:
    from fedge.deploy.local import serve_from_cli

    if args.listen is not None:
        check_address("--listen", args.listen)
    for parent in args.parent:
        node, sep, address = parent.rpartition("=")
        if sep and not node:
            raise FedgeError(f"--parent: got {parent!r}; allowed: HOST:PORT or ID=HOST:PORT")
        check_address("--parent", address)
    return serve_from_cli(args)


def cmd_deploy_local(args: argparse.Namespace) -> int:
    from fedge.deploy.local import deploy_local
    from fedge.experiment.config import load_config

    if args.faults < 0:
        raise FedgeError(f"--faults: got {args.faults}; allowed: a number of faults >= 0")
    cfg = load_config(args.config, args.overrides)
    run_dir, summary = deploy_local(
        cfg, args.out, args.certs, args.devices_per_process, echo=_echo, faults=args.faults
    )
    _print_summary(summary, run_dir)
    print(f"run: {run_dir}")
    return 0


def cmd_report(run_dir: str) -> int:
    from fedge.results import rebuild_report

    print(f"report: {rebuild_report(Path(run_dir))}")
    return 0


_DEPLOYMENT = {"certs": cmd_certs, "serve": cmd_serve, "deploy-local": cmd_deploy_local}


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
        if args.command in _DEPLOYMENT:
            return _DEPLOYMENT[args.command](args)
        return cmd_report(args.run_dir)
    except FedgeError as exc:
        print(f"fedge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`fedge list | head`): nothing to say
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
