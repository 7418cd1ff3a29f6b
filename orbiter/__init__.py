"""Orbiter: a cloud-edge AI platform."""

__all__: list[str] = []
