"""Satellite contact windows, store-and-forward links and placement. Not built yet."""
