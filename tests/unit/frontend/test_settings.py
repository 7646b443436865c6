"""The frontend's own settings: trusted proxies are addresses or networks, nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from grainhouse_frontend.settings import FrontendSettings


def test_trusted_proxies_are_addresses_or_networks() -> None:
    got = FrontendSettings(trusted_proxies=" 127.0.0.1, 10.0.0.0/8 ,::1,")
    assert got.trusted_proxies == "127.0.0.1,10.0.0.0/8,::1"
    assert FrontendSettings().trusted_proxies == ""  # the default believes nobody
    for bad in ("*", "proxy.example.org", "10.0.0.0/33", "127.0.0.1 10.0.0.1"):
        with pytest.raises(ValidationError, match="not an IP address or network"):
            FrontendSettings(trusted_proxies=bad)
