"""datetime -> google.protobuf.Timestamp, the one conversion every gRPC edge needs.

Owns: nothing.
Trusts: naive datetimes to be UTC (as PostgreSQL's timestamptz arrive aware anyway).
Never: guesses a local time zone.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)  # aware values are converted to UTC; naive ones are UTC
    return out


def maybe_timestamp(value: datetime | None) -> Timestamp | None:
    """None stays None (the caller leaves the field unset)."""
    return None if value is None else timestamp(value)
