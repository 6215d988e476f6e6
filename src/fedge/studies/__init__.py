"""The study commands: ``fedge compare``, ``fedge schedule``, ``fedge partition-model``."""
