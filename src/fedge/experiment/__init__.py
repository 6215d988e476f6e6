"""Experiments: TOML config -> validated config -> built objects -> a run with its results."""

from fedge.experiment.checkpoint import CheckpointError
from fedge.experiment.config import ExperimentConfig, load_config, parse_config
from fedge.experiment.run import RunResult, resume_experiment, run_experiment

__all__ = [
    "CheckpointError",
    "ExperimentConfig",
    "RunResult",
    "load_config",
    "parse_config",
    "resume_experiment",
    "run_experiment",
]
