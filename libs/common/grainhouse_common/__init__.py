"""Grainhouse shared library: the small spine every service stands on.

Owns: nothing at run time; it offers settings, logging, error kinds, request ids,
gRPC / NATS / PostgreSQL helpers and metrics helpers.
Trusts: the process environment (through `settings`).
Never: imports a service package (`grainhouse_auth`, `grainhouse_grainmgr`, ...);
import-linter enforces this.
"""

__version__ = "0.1.0"
