"""Vehicle traces from SUMO: a network, random trips and a headless run with FCD output.

``cached_fcd(scenario, cache_dir)`` returns the path of a SUMO floating-car-data (FCD) file
for the scenario, generating it once: ``netgenerate`` builds the road network (a straight
multi-lane highway of ``segments`` segments, or a ``grid_size`` x ``grid_size`` city grid),
``randomTrips.py`` draws ``vehicles`` trips (routed by ``duarouter``) departing over
``insert_s`` seconds, and ``sumo`` simulates ``seconds`` seconds with ``--fcd-output``. Every
tool runs as a subprocess with a timeout and the scenario's seed. The file is stored as
``<cache_dir>/fcd-<key>.xml`` where ``key`` hashes the scenario, so the same scenario
replays from the file without SUMO. Read it with ``fedge.system.traces.load_fcd``.

SUMO comes from the ``eclipse-sumo`` wheel (``pip install 'fedge[sumo]'``) or ``SUMO_HOME``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from fedge.core.errors import FedgeError

INSTALL_HINT = "pip install 'fedge[sumo]'"


@dataclass(frozen=True)
class SumoScenario:
    """What SUMO simulates; every field enters the cache key.

    Highway: ``segments`` segments of ``segment_m`` metres along y = 0 from x = 0, ``lanes``
    lanes per direction, speed limit ``speed_mps``. Grid: ``grid_size`` junctions per side,
    ``grid_length_m`` apart, from (0, 0).
    """

    network: Literal["highway", "grid"]
    vehicles: int
    insert_s: float
    seconds: float
    step_s: float
    seed: int
    segments: int = 1
    segment_m: float = 1000.0
    lanes: int = 3
    speed_mps: float = 33.3
    grid_size: int = 5
    grid_length_m: float = 200.0

    def key(self) -> str:
        """A short hash of the scenario (the cache file's name)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def sumo_home() -> Path:
    """SUMO's home folder: the ``sumo`` package's, else ``$SUMO_HOME``; else an install hint."""
    try:
        import sumo

        home = Path(sumo.SUMO_HOME)
    except ImportError:
        env = os.environ.get("SUMO_HOME")
        if not env:
            raise FedgeError(f"SUMO is not installed; install it with {INSTALL_HINT}") from None
        home = Path(env)
    if not (home / "bin").is_dir() or not (home / "tools" / "randomTrips.py").is_file():
        raise FedgeError(f"SUMO at {home} is incomplete; install it with {INSTALL_HINT}")
    return home


def _run(cmd: list[str], home: Path, timeout_s: float, what: str, cwd: Path | None = None) -> str:
    """Run one SUMO tool; a failure or timeout is one line naming the tool."""
    env = {**os.environ, "SUMO_HOME": str(home)}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise FedgeError(
            f"SUMO {what} ran longer than {timeout_s:g} s (system.sumo.timeout_s)"
        ) from None
    except OSError as exc:
        raise FedgeError(f"SUMO {what} cannot start: {exc.strerror}; {INSTALL_HINT}") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise FedgeError(f"SUMO {what} failed (exit {done.returncode}): {last}")
    return done.stdout


def _network_cmd(scenario: SumoScenario, home: Path, out: Path) -> list[str]:
    cmd = [str(home / "bin" / "netgenerate"), "--grid", "--seed", str(scenario.seed)]
    if scenario.network == "highway":
        cmd += [
            f"--grid.x-number={scenario.segments + 1}",
            "--grid.y-number=1",
            f"--grid.x-length={scenario.segment_m}",
            f"--default.lanenumber={scenario.lanes}",
            f"--default.speed={scenario.speed_mps}",
        ]
    else:
        cmd += [f"--grid.number={scenario.grid_size}", f"--grid.length={scenario.grid_length_m}"]
    return [*cmd, "--no-turnarounds", "true", "-o", str(out)]


def generate_fcd(scenario: SumoScenario, out: Path, timeout_s: float) -> None:
    """Run netgenerate, randomTrips.py (with duarouter) and sumo; write the FCD to ``out``."""
    home = sumo_home()
    period_s = scenario.insert_s / scenario.vehicles
    with tempfile.TemporaryDirectory(prefix="fedge-sumo-") as tmp:
        work = Path(tmp)
        net, routes, fcd = work / "net.xml", work / "routes.rou.xml", work / "fcd.xml"
        _run(_network_cmd(scenario, home, net), home, timeout_s, "netgenerate")
        trips = [
            sys.executable,
            str(home / "tools" / "randomTrips.py"),
            "-n", str(net), "-o", str(work / "trips.xml"), "-r", str(routes),
            "-b", "0", "-e", f"{scenario.insert_s}", "-p", f"{period_s:.6f}",
            "--seed", str(scenario.seed), "--fringe-factor", "100", "--validate",
        ]  # fmt: skip
        _run(trips, home, timeout_s, "randomTrips.py", cwd=work)
        sim = [
            str(home / "bin" / "sumo"),
            "-n", str(net), "-r", str(routes), "--end", f"{scenario.seconds}",
            "--step-length", f"{scenario.step_s}", "--seed", str(scenario.seed),
            "--fcd-output", str(fcd), "--no-step-log", "true", "--no-warnings", "true",
        ]  # fmt: skip
        _run(sim, home, timeout_s, "sumo", cwd=work)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(f".{os.getpid()}.part")  # concurrent builders
        shutil.copyfile(fcd, partial)
        partial.replace(out)


def cached_fcd(scenario: SumoScenario, cache_dir: Path, timeout_s: float = 300.0) -> Path:
    """The FCD file of ``scenario`` in ``cache_dir``; SUMO runs only when it is absent.

    A cached file is replayed without looking for SUMO at all (delete it to regenerate, e.g.
    with another SUMO version).
    """
    path = cache_dir / f"fcd-{scenario.key()}.xml"
    if not path.is_file():
        generate_fcd(scenario, path, timeout_s)
    return path
