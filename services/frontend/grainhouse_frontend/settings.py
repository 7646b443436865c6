"""Settings of the frontend (`GRAINHOUSE_FRONTEND_*`).

Owns: the names, defaults and validation of the frontend's own settings.
Trusts: the environment (see grainhouse_common.settings).
Never: holds a credential: the frontend has no database and no secrets of its own.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from grainhouse_common.settings import ServiceSettings


class FrontendSettings(ServiceSettings):
    service = "frontend"

    listen: str = Field("127.0.0.1:6080", description="Public HTTP listener (host:port).")
    oidc_providers: str = Field(
        "", description="Comma-separated OpenID Connect provider names offered on the sign-in page."
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (CIDR) of reverse proxies whose"
            " X-Forwarded-For / X-Forwarded-Proto headers are believed: the client address"
            " (guess limits, session records) is then the last address they did not add."
            " Empty: those headers are ignored from everyone."
        ),
    )
    max_request_line_bytes: int = Field(
        8192, gt=1024, le=65536, description="Longest request line or header accepted."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        for part in parts:
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part[:60]!r} is not an IP address or network") from None
        return ",".join(parts)
