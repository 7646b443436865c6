from __future__ import annotations

from pathlib import Path

import pytest

from grainhouse_common.settings import CommonSettings, ServiceSettings, SettingsError, load

pytestmark = pytest.mark.unit


class DemoSettings(ServiceSettings):
    service = "auth"
    retries: int = 3


def test_defaults_and_typed_values() -> None:
    common = load(CommonSettings, {"GRAINHOUSE_LOG_LEVEL": "debug", "GRAINHOUSE_DEV_MODE": "true"})
    assert common.log_level == "debug"
    assert common.dev_mode is True
    assert common.data_dir == Path("var")


def test_unknown_common_setting_is_named() -> None:
    with pytest.raises(SettingsError, match=r"^unknown setting GRAINHOUSE_LOGLEVEL$"):
        load(CommonSettings, {"GRAINHOUSE_LOGLEVEL": "debug"})


def test_unknown_setting_in_own_namespace_is_refused_but_others_are_left_alone() -> None:
    ok = load(DemoSettings, {"GRAINHOUSE_AUTH_RETRIES": "5", "GRAINHOUSE_GRAINMGR_WHATEVER": "1"})
    assert ok.retries == 5
    with pytest.raises(SettingsError, match="unknown setting GRAINHOUSE_AUTH_RETRYS"):
        load(DemoSettings, {"GRAINHOUSE_AUTH_RETRYS": "5"})


def test_invalid_value_names_setting_and_reason() -> None:
    with pytest.raises(SettingsError) as info:
        load(DemoSettings, {"GRAINHOUSE_AUTH_RETRIES": "many"})
    message = str(info.value)
    assert message.startswith("invalid setting GRAINHOUSE_AUTH_RETRIES='many'")
    assert "\n" not in message


def test_file_indirection_reads_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "retries"
    secret.write_text("7\n")
    got = load(DemoSettings, {"GRAINHOUSE_AUTH_RETRIES_FILE": str(secret)})
    assert got.retries == 7
    with pytest.raises(SettingsError, match="cannot read"):
        load(DemoSettings, {"GRAINHOUSE_AUTH_RETRIES_FILE": str(tmp_path / "missing")})


def test_secret_values_are_not_echoed() -> None:
    class WithSecret(ServiceSettings):
        service = "backup"
        api_key: int = 1

    with pytest.raises(SettingsError) as info:
        load(WithSecret, {"GRAINHOUSE_BACKUP_API_KEY": "hunter2"})
    assert "hunter2" not in str(info.value)
