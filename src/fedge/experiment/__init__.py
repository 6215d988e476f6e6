"""Config and assembly: TOML -> validated config -> built objects (``build``), engines."""

from fedge.experiment.config import ExperimentConfig, load_config, parse_config

__all__ = ["ExperimentConfig", "load_config", "parse_config"]
