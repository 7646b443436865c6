"""The pure parts of auth's grain origins: id format, tab ids, and the migration's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from grainhouse_auth import origins
from grainhouse_common.errors import GrainhouseError, Kind

pytestmark = pytest.mark.unit
MIGRATIONS = Path(origins.__file__).with_name("migrations")


def test_origin_ids_are_128_random_bits_in_a_dns_label() -> None:
    ids = {origins.new_origin_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and origins.check_origin_id(i) == i for i in ids)


@pytest.mark.parametrize("bad", ["", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 30 + ".."])
def test_malformed_origin_ids_are_invalid_and_never_looked_up(bad: str) -> None:
    with pytest.raises(GrainhouseError) as err:
        origins.check_origin_id(bad)
    assert err.value.kind is Kind.INVALID


def test_tab_ids_are_picked_when_empty_and_checked_when_given() -> None:
    picked = {origins.check_tab_id("") for _ in range(100)}
    assert len(picked) == 100 and all(len(t) == 16 for t in picked)
    assert origins.check_tab_id("tab_1-A") == "tab_1-A"
    for bad in ("a b", "x" * 65, "tab\n", "é"):
        with pytest.raises(GrainhouseError):
            origins.check_tab_id(bad)


def test_the_origins_table_keeps_a_hash_and_a_credential_id_never_a_secret() -> None:
    sql = (MIGRATIONS / "0004_origins.sql").read_text()
    table = sql[sql.index("CREATE TABLE origins") :].split(");", 1)[0]
    columns = {line.split()[0] for line in table.splitlines()[1:] if line.strip()}
    assert "origin_hash" in columns and "credential_id" in columns
    assert not {c for c in columns if "secret" in c or c in ("origin_id", "credential")}
