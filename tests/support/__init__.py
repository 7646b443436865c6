"""Shared test helpers (plain modules, not conftests)."""
