"""Edge caching with recommendation: request traces, replacement policies, soft hits,
system cost, the federated recommender and FDRL agents (SPEC §7). The study that runs it
on the system model is ``fedge.studies.caching``."""

from fedge.caching.catalog import POLICIES, Policy, find_policy
from fedge.caching.settings import CachingSettings

__all__ = ["POLICIES", "CachingSettings", "Policy", "find_policy"]
