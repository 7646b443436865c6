"""Numbered SQL migrations of the auth schema (applied at start)."""
