from __future__ import annotations

import json
import logging

import grpc
import pytest

from grainhouse_common import errors, requestid
from grainhouse_common.log import JsonFormatter

pytestmark = pytest.mark.unit


def test_error_table_is_total_and_round_trips_through_grpc() -> None:
    assert set(errors.TABLE) == set(errors.Kind)
    for kind, row in errors.TABLE.items():
        assert 400 <= row.http_status <= 599
        back = errors.kind_from_grpc(row.grpc_code)
        # OVERLOADED and TOO_LARGE share RESOURCE_EXHAUSTED; everything else is exact.
        if kind not in (errors.Kind.TOO_LARGE,):
            assert back is kind


def test_unknown_grpc_codes_become_internal_with_a_generic_message() -> None:
    assert errors.kind_from_grpc(grpc.StatusCode.DATA_LOSS) is errors.Kind.INTERNAL


def test_json_log_line_carries_request_id_and_masks_secrets() -> None:
    fmt = JsonFormatter("auth")
    token = requestid.set_current("rid-abcdef12")
    try:
        record = logging.makeLogRecord(
            {
                "msg": "issued %s",
                "args": ("x",),
                "levelname": "INFO",
                "name": "t",
                "api_token": "ghp_secret",
                "grain_count": 3,
            }
        )
        line = json.loads(fmt.format(record))
    finally:
        requestid.reset(token)
    assert line["request_id"] == "rid-abcdef12"
    assert line["service"] == "auth"
    assert line["msg"] == "issued x"
    assert line["api_token"] == "***"
    assert line["grain_count"] == 3


def test_request_id_from_peer_is_accepted_only_when_well_formed() -> None:
    assert requestid.accept("abcdef1234") == "abcdef1234"
    bad = requestid.accept('x"\n{"level":"error"}')
    assert bad != 'x"\n{"level":"error"}' and len(bad) == 16
