"""Orbiter: a cloud-edge AI platform."""

__version__ = "0.1.0"

__all__ = ["__version__"]
