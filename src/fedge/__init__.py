"""fedge: collaborative learning across devices, edge servers and the cloud."""

__version__ = "0.1.0"
