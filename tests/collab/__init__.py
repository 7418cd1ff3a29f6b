"""Tests of orbiter.collab: the sedna.io CRDs, controllers and the worker SDK."""
