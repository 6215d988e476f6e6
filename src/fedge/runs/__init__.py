"""The run lifecycle: run an experiment, observe and store its rounds, checkpoint, resume."""

from fedge.runs.checkpoint import CheckpointError
from fedge.runs.result import RunResult
from fedge.runs.run import resume_experiment, run_experiment
from fedge.runs.study import run_study

__all__ = ["CheckpointError", "RunResult", "resume_experiment", "run_experiment", "run_study"]
