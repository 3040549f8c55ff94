"""The steerlab version, recorded in every file steerlab writes."""

__version__ = "0.1.0"
