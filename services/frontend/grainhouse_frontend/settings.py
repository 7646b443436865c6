"""Settings of the frontend (`GRAINHOUSE_FRONTEND_*`).

Owns: the names, defaults and validation of the frontend's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: holds a credential: the frontend has no database and no secrets of its own.
"""

from __future__ import annotations

from pydantic import Field

from grainhouse_common.settings import ServiceSettings


class FrontendSettings(ServiceSettings):  # type: ignore[misc]
    service = "frontend"

    listen: str = Field("127.0.0.1:6080", description="Public HTTP listener (host:port).")
    oidc_providers: str = Field(
        "", description="Comma-separated OpenID Connect provider names offered on the sign-in page."
    )
    max_request_line_bytes: int = Field(
        8192, gt=1024, le=65536, description="Longest request line or header accepted."
    )
