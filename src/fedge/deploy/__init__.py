"""Deployment: one gRPC node process (``serve``) and a deployment on loopback (``local``)."""
