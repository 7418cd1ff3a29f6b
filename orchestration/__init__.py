"""Orchestration core: revisioned store, API server, client, cloud and edge cores."""
