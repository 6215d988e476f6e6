"""The study commands: ``fedge compare``, ``fedge schedule``, ``fedge partition-model``."""

from fedge.studies import (
    caching,  # noqa: F401  (importing it registers the study)
    scheduling,  # noqa: F401  (importing it registers the study)
)
