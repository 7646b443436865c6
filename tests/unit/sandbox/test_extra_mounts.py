"""Extra read-only mounts: placed where asked, never under a place a grain mount hides."""

from __future__ import annotations

import pytest

from grainhouse_grainmgr.sandbox_layout import _extra_target

pytestmark = pytest.mark.unit


def test_plain_path_is_mounted_at_the_same_place() -> None:
    assert _extra_target("/usr/share/zoneinfo") == ("/usr/share/zoneinfo", "/usr/share/zoneinfo")


def test_pair_moves_a_host_path_under_tmp_to_a_fixed_place() -> None:
    assert _extra_target(("/tmp/checkout/bridge", "/opt/grainhouse/bridge/")) == (
        "/tmp/checkout/bridge",
        "/opt/grainhouse/bridge",
    )


@pytest.mark.parametrize(
    "inside", ["/tmp", "/tmp/x", "/var/lib", "/opt/app/x", "/proc/1", "/dev/x"]
)
def test_places_hidden_by_grain_mounts_are_refused(inside: str) -> None:
    with pytest.raises(ValueError, match="lies under a grain mount"):
        _extra_target(("/srv/x", inside))
    if inside.startswith("/tmp"):
        with pytest.raises(ValueError, match="lies under a grain mount"):
            _extra_target(inside)  # the old failure: a checkout under /tmp


def test_relative_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        _extra_target(("srv/x", "/opt/x"))
