"""Tests of orbiter.inference: real servers on 127.0.0.1, real clients."""
