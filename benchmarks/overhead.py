"""fedge's local engine vs a plain PyTorch loop doing the same FedAvg work, in one run.

Both sides run the quickstart's FedAvg (examples/quickstart.toml) for ``--rounds`` rounds:
the same partition, initial weights, client sampling, per-device torch.Generator seeds,
local SGD loop and sample-weighted averaging. The fedge side is
``coordinator.run(transport, ...)`` on the simulated transport with no observer; the
baseline is a hand-written torch loop below. Evaluation is not part of either side.

Each run happens in its own child process (``--side fedge|baseline``), so peak RSS
(``ru_maxrss``, loading included) is per side. Both children load data with
``build(cfg)`` (device data are index views into the loaded arrays) and only the rounds are
timed. Runs are interleaved fedge/baseline, baseline/fedge, ... to cancel machine noise;
the parent prints the median and min wall time, the median CPU time, peak RSS and peak PSS,
the fedge/baseline ratios (target <= 1.05) and whether the final weights are identical.

PSS (proportional set size, ``/proc/<pid>/smaps_rollup``) charges each shared page to the
processes mapping it in equal parts, so the libraries both sides map (torch) count once in
total instead of once per process, as RSS counts them. The parent samples the child's
process tree (the child and its descendants) every ``PSS_INTERVAL_S`` and keeps the peak,
of PSS and of its anonymous part (``Pss_Anon``: the heap, tensors included, which no other
process on the machine shares, so it does not move with what else runs).

Each child runs torch on ``--threads`` intra-op threads (default 1): on a small shared
machine two OpenMP threads stall whenever another process takes a core (here 2 threads
ran the quickstart CNN ~8x slower than 1 under load), which swamps the comparison.
CPU time is reported next to wall time as a second, load-robust view. The local work is
the quickstart's own (1 epoch of batch 32 per device); the defaults (5 rounds x 3 repeats
a side) take about 3 minutes on a 2-core machine.
Run from the repo root::

    .venv/bin/python benchmarks/overhead.py                  # 5 rounds x 3 repeats a side
    .venv/bin/python benchmarks/overhead.py --rounds 5 --repeats 5 --set training.steps=5
    .venv/bin/python benchmarks/overhead.py --threads 0 --json    # torch's default threads
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedge.core.node import derive_seed
from fedge.experiment.build import Experiment, build
from fedge.experiment.config import ExperimentConfig, load_config

CONFIG = "examples/quickstart.toml"
SIDES = ("fedge", "baseline")
PSS_INTERVAL_S = 0.05
State = dict[str, torch.Tensor]


# --- the plain PyTorch baseline -------------------------------------------------------


def check_plain_fedavg(cfg: ExperimentConfig) -> None:
    """The baseline replicates plain FedAvg only; refuse configs it would not match."""
    fed, t = cfg.federation, cfg.training
    plain = (
        cfg.algorithm == "fedavg"
        and fed.aggregator == "mean"
        and fed.server_optimizer in (None, "none")
        and fed.deadline_s is None
        and cfg.system.dropout_prob == 0.0
        and t.optimizer == "sgd"
        and t.proximal_mu == 0.0
    )
    if not plain:
        sys.exit("overhead.py: the baseline covers plain FedAvg with SGD, mean, no deadline")


def batches(n: int, cfg: ExperimentConfig, gen: torch.Generator) -> list[torch.Tensor]:
    """Minibatch indices: ``epochs`` randperm passes, or exactly ``steps`` batches."""
    t = cfg.training
    per_pass = -(-n // t.batch_size)
    passes = t.epochs if t.steps == 0 else -(-t.steps // per_pass)
    out: list[torch.Tensor] = []
    for _ in range(passes):
        perm = torch.randperm(n, generator=gen)
        out.extend(perm[s : s + t.batch_size] for s in range(0, n, t.batch_size))
    return out[: t.steps] if t.steps > 0 else out


def train_device(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig, seed: int
) -> tuple[float, int]:
    """Local SGD from the model's current weights; returns (summed loss, samples)."""
    t = cfg.training
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )
    model.train()
    loss_sum, seen = 0.0, 0
    for idx in batches(len(y), cfg, gen) if len(y) else []:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
    return loss_sum, seen


def average(states: list[State], weights: list[float]) -> State:
    """Sample-weighted mean per entry, accumulated in float64 and cast back."""
    total = sum(weights)
    out: State = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for w, s in zip(weights, states, strict=True):
            acc += w * s[key].to(torch.float64)
        out[key] = (acc / total).to(ref.dtype)
    return out


def baseline_run(exp: Experiment, rounds: int) -> tuple[State, float]:
    """FedAvg by hand: sample, train each chosen device, average; (final state, last loss)."""
    cfg = exp.config
    devices = exp.system.ids("device")
    index = [torch.as_tensor(p, dtype=torch.int64) for p in exp.parts]
    rng = np.random.default_rng(derive_seed(cfg.seed, "coordinator"))
    apps_seed = derive_seed(cfg.seed, "apps")
    model, state, loss = exp.model, dict(exp.initial_state), float("nan")
    for r in range(1, rounds + 1):
        k = min(cfg.federation.clients_per_round, len(devices))
        states, weights, losses = [], [], []
        for i in rng.choice(len(devices), size=k, replace=False):
            node_rng = np.random.default_rng(derive_seed(apps_seed, devices[i], r, "train"))
            seed = int(node_rng.integers(2**62))
            model.load_state_dict(state)
            x, y = exp.train.x[index[i]], exp.train.y[index[i]]
            loss_sum, seen = train_device(model, x, y, cfg, seed)
            states.append({n: v.detach().clone() for n, v in model.state_dict().items()})
            weights.append(float(len(y)))
            losses.append(loss_sum / seen if seen else 0.0)
        state = average(states, weights)
        loss = sum(w * v for w, v in zip(weights, losses, strict=True)) / sum(weights)
    return state, loss


# --- one side in a child process ------------------------------------------------------


def rss_now_mb() -> float:
    """Current resident set size (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def fedge_run(exp: Experiment, rounds: int) -> tuple[State, float]:
    """The engine as run_experiment drives it, minus the observer (no evaluation)."""
    history = exp.coordinator.run(exp.transport, exp.initial_state, exp.rng, rounds)
    return history.final_state, history.metrics[-1]["train_loss"]


def child(side: str, args: argparse.Namespace) -> None:
    """Load with build(cfg), time only the rounds, save the weights and the figures."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG, args.set)
    check_plain_fedavg(cfg)
    exp = build(cfg)
    # Both sides' first optimizer imports torch._dynamo (~2 s here): pay it before timing.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    gc.collect()
    rss_before = rss_now_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    state, loss = (fedge_run if side == "fedge" else baseline_run)(exp, args.rounds)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    torch.save(state, args.result.with_suffix(".pt"))
    figures = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "rss_before_mb": rss_before}
    figures.update(loss=loss, threads=torch.get_num_threads())
    args.result.write_text(json.dumps(figures))


# --- the parent: interleave, compare, report ------------------------------------------


def _parents() -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every process visible in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # the command name in parentheses may hold spaces: the fields follow its last ")"
        yield int(entry.name), int(stat[stat.rindex(")") + 2 :].split()[1])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_kib(pid: int) -> tuple[int, int]:
    """(Pss, Pss_Anon) of one process in KiB from /proc/<pid>/smaps_rollup; 0s once gone."""
    pss = anon = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Pss_Anon:"):
                anon = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, anon


def tree_pss_mb(root: int) -> tuple[float, float]:
    """(PSS, anonymous PSS) of ``root``'s process tree now, MiB."""
    sizes = [pss_kib(pid) for pid in process_tree(root)]
    return sum(p for p, _ in sizes) / 1024, sum(a for _, a in sizes) / 1024


def run_sampled(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` to completion, sampling its tree's PSS; (peak PSS, peak anon PSS) MiB."""
    peak, peak_anon = 0.0, 0.0
    with subprocess.Popen(cmd) as proc:
        while proc.poll() is None:
            pss, anon = tree_pss_mb(proc.pid)
            peak, peak_anon = max(peak, pss), max(peak_anon, anon)
            time.sleep(PSS_INTERVAL_S)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return peak, peak_anon


def spawn(side: str, args: argparse.Namespace, result: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", side, "--result", str(result)]
    cmd += ["--rounds", str(args.rounds), "--threads", str(args.threads)]
    cmd += [f"--set={s}" for s in args.set]
    peak_pss, peak_anon = run_sampled(cmd)
    figures: dict[str, Any] = json.loads(result.read_text())
    figures.update(peak_pss_mb=peak_pss, peak_pss_anon_mb=peak_anon)
    figures["state"] = torch.load(result.with_suffix(".pt"))
    return figures


def compare(states: list[State]) -> dict[str, Any]:
    """Every run's final weights against the first fedge run's: identical, or how far."""
    ref = states[0]
    identical = all(all(torch.equal(s[k], ref[k]) for k in ref) for s in states)
    diff = max(float((s[k] - ref[k]).abs().max()) for s in states for k in ref)
    close = all(
        all(torch.allclose(s[k], ref[k], rtol=1e-6, atol=1e-7) for k in ref) for s in states
    )
    return {"identical": identical, "allclose": close, "max_abs_diff": diff}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        out[side] = {
            "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
            "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in rs),
            "peak_pss_anon_mb": statistics.median(r["peak_pss_anon_mb"] for r in rs),
            "rss_before_mb": statistics.median(r["rss_before_mb"] for r in rs),
            "last_train_loss": rs[0]["loss"],
            "walls": walls,
        }
    f, b = out["fedge"], out["baseline"]
    out["ratio"] = {
        "wall_median": f["wall_s_median"] / b["wall_s_median"],
        "wall_min": f["wall_s_min"] / b["wall_s_min"],
        "cpu_median": f["cpu_s_median"] / b["cpu_s_median"],
        "peak_rss": f["peak_rss_mb"] / b["peak_rss_mb"],
        "peak_pss": f["peak_pss_mb"] / b["peak_pss_mb"],
        "peak_pss_anon": f["peak_pss_anon_mb"] / b["peak_pss_anon_mb"],
    }
    return out


def parent(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                runs[side].append(spawn(side, args, Path(tmp) / f"{side}{i}.json"))
    states = [r.pop("state") for s in SIDES for r in runs[s]]
    report = summarise(runs)
    report["weights"] = compare(states)
    report["setup"] = {"config": CONFIG, "rounds": args.rounds, "repeats": args.repeats}
    report["setup"].update(sets=args.set, threads=runs["fedge"][0]["threads"])
    return report


def _row(label: str, cells: tuple[Any, ...], fmt: str) -> str:
    return f"{label:<11}" + "".join(f"{c:>17{fmt}}" for c in cells)


def print_table(rep: dict[str, Any]) -> None:
    s = rep["setup"]
    print(
        f"{s['config']}  rounds={s['rounds']}  repeats={s['repeats']}  "
        f"torch threads={s['threads']}  set={s['sets']}"
    )
    keys = ("wall_s_median", "wall_s_min", "cpu_s_median", "peak_rss_mb", "peak_pss_mb")
    keys += ("peak_pss_anon_mb", "rss_before_mb")
    heads = ("wall s (median)", "wall s (min)", "cpu s (median)", "peak RSS MB", "peak PSS MB")
    heads += ("peak anon PSS MB", "RSS at run MB")
    print(_row("side", heads, ""))
    for side in SIDES:
        print(_row(side, tuple(rep[side][k] for k in keys), ".2f"))
    q = rep["ratio"]
    ratios = (q["wall_median"], q["wall_min"], q["cpu_median"], q["peak_rss"], q["peak_pss"])
    ratios += (q["peak_pss_anon"],)
    print(_row("fedge/base", ratios, ".3f"))
    w = rep["weights"]
    verdict = "identical" if w["identical"] else ("allclose" if w["allclose"] else "DIFFERENT")
    print(f"final weights, fedge vs baseline: {verdict} (max |diff| {w['max_abs_diff']:.3g})")
    losses = rep["fedge"]["last_train_loss"], rep["baseline"]["last_train_loss"]
    print(f"last-round train loss: fedge {losses[0]:.6f}, baseline {losses[1]:.6f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        child(args.side, args)
        return
    report = parent(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
