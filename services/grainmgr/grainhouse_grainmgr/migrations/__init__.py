"""Numbered SQL migrations of the grainmgr schema (applied at start)."""
