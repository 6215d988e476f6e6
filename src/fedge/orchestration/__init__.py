"""Decisions over a read-only view of the system (split points, scheduling, caching)."""
