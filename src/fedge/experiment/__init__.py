"""Experiments: TOML config -> validated config -> built objects -> a run with its results."""

from fedge.experiment.config import ExperimentConfig, load_config, parse_config
from fedge.experiment.run import RunResult, run_experiment

__all__ = ["ExperimentConfig", "RunResult", "load_config", "parse_config", "run_experiment"]
