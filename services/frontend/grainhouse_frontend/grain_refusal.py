"""The refusal of a grain request: the status and message the platform answers with itself.

Raised by grain_proxy.py (origin, authorization, the Origin check) and grain_streams.py (a
grain grainmgr cannot start or does not know); grain_proxy.py turns it into the short answer.

Owns: nothing (an exception type).
Trusts: whoever raises it for a message the client may read.
Never: imports another frontend module (both sides of grain traffic import it).
"""

from __future__ import annotations


class Denied(Exception):
    def __init__(self, status: int, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, sent as Retry-After when > 0
