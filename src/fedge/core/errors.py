"""Errors that carry a message meant for the user."""


class FedgeError(Exception):
    """Base class of every error fedge raises on purpose."""


class ConfigError(FedgeError, ValueError):
    """Bad user input: names the field, the bad value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; allowed: {allowed}")
