"""The gRPC engine: real processes, protobuf frames, TLS with per-node certificates.

Needs the ``grpc`` extra; importing this package without it raises a FedgeError that says
how to install it.
"""

from __future__ import annotations

from fedge.core.errors import FedgeError

try:
    import grpc  # noqa: F401
    from google.protobuf import message as _protobuf_message  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise FedgeError(
        f"the gRPC engine needs the grpc extra ({exc.name} is missing): pip install 'fedge[grpc]'"
    ) from None
