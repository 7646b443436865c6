"""Grainhouse package."""
