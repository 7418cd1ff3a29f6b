"""Tests of the shared API types."""
