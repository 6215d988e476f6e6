"""Where code runs: every runtime implements the Transport protocol of fedge.core."""

from fedge.runtime.local import LocalTransport, Membership, NodeSet
from fedge.runtime.simulated import Ledger, SimulatedTransport

__all__ = ["Ledger", "LocalTransport", "Membership", "NodeSet", "SimulatedTransport"]
