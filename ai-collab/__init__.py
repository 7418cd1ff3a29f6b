"""Sedna-compatible collaborative AI (jobs, controllers, worker SDK). Not built yet."""
