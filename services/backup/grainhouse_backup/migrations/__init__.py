"""Numbered SQL migrations of the backup schema (applied at start)."""
