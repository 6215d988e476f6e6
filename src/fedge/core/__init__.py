"""Shared types of fedge. This package imports nothing else from fedge."""

from fedge.core.errors import ConfigError, FedgeError
from fedge.core.message import Message
from fedge.core.registry import Registry
from fedge.core.update import ModelState, Update, Work

__all__ = ["ConfigError", "FedgeError", "Message", "ModelState", "Registry", "Update", "Work"]
