"""Secrets, password policy, rate-limit backoff, TOTP arithmetic, paging cursors, mail, dev mode."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pyotp
import pytest

from grainhouse_auth import convert, credentials, logins, passwords, ratelimit, sessions, totp
from grainhouse_auth.mailer import MailConfig, Mailer
from grainhouse_common.errors import GrainhouseError, Kind

pytestmark = pytest.mark.unit


def test_secrets_are_prefixed_random_and_stored_as_hashes() -> None:
    a, b = credentials.new_secret("ghp_"), credentials.new_secret("ghp_")
    assert a.startswith("ghp_") and a != b and len(a) >= 4 + 43
    digest = credentials.hash_secret(a)
    assert len(digest) == 32 and a.encode() not in digest
    assert credentials.same(digest, credentials.hash_secret(a))
    assert not credentials.same(digest, credentials.hash_secret(b))
    assert credentials.plausible(a, "ghp_") and not credentials.plausible(a, "ghs_")
    assert not credentials.plausible("ghp_" + "x" * 300, "ghp_")
    assert credentials.hint(a) == a[:8] and len(credentials.hint(a)) < len(a) // 4


@pytest.mark.parametrize(
    "password",
    [
        "short",
        "password1234",  # a common word with digits stuck on
        "qwertyuiop123!",
        "aaaaaaaaaaaaaaaa",
        "abababababababab",
        "x" * 300,
    ],
)
def test_weak_passwords_are_refused(password: str) -> None:
    assert passwords.weakness(password) is not None
    with pytest.raises(GrainhouseError) as err:
        passwords.hash_password(password)
    assert err.value.kind is Kind.INVALID and password not in err.value.public_message


def test_the_bundled_common_list_is_loaded() -> None:
    common = passwords.common_passwords()
    assert len(common) >= 9000
    assert {"123456", "password", "qwerty", "dragon"} <= common


def test_good_password_hashes_with_argon2id_and_verifies() -> None:
    pw = "violet-harbour-tangerine-47"
    assert passwords.weakness(pw) is None
    stored = passwords.hash_password(pw)
    assert stored.startswith("$argon2id$") and pw not in stored
    assert passwords.verify(stored, pw)
    assert not passwords.verify(stored, pw + "!")
    assert not passwords.verify(None, pw)  # unknown account: dummy hash, never a match
    assert not passwords.verify(stored, pw + "x" * 300)


def test_backoff_is_free_then_doubling_then_blocked() -> None:
    p = ratelimit.Policy(free=3, base_delay=1, max_delay=8, block_after=10, block_seconds=600)
    waits = [p.penalty(n) for n in range(1, 12)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:7] == [1, 2, 4, 8]
    assert waits[7:9] == [8, 8]  # capped
    assert waits[9:] == [600, 600]  # blocked


def test_rate_limit_keys_never_hold_an_email() -> None:
    key = ratelimit.account_key("login", " Ada@Example.org ")
    assert "ada" not in key.lower().split(":", 2)[2]
    assert key == ratelimit.account_key("login", "ada@example.org")
    assert ratelimit.address_key("login", "") is None
    assert ratelimit.keys(None, "a", None, "b") == ["a", "b"]


def test_totp_codes_match_their_step_within_the_window_only() -> None:
    seed = pyotp.random_base32()
    otp = pyotp.TOTP(seed)
    t = 1_900_000_000.0
    step = int(t) // 30
    assert totp.matching_step(seed, otp.at(t), t) == step
    assert totp.matching_step(seed, otp.at(t - 30)[:3] + " " + otp.at(t - 30)[3:], t) == step - 1
    assert totp.matching_step(seed, otp.at(t + 30), t) == step + 1
    far = otp.at(t + 300)
    if far not in {otp.at(t - 30), otp.at(t), otp.at(t + 30)}:
        assert totp.matching_step(seed, far, t) is None
    assert totp.matching_step(seed, "12345", t) is None
    assert totp.matching_step(seed, "abcdef", t) is None


def test_recovery_codes_are_distinct_and_normalised_before_hashing() -> None:
    codes = {totp.new_recovery_code() for _ in range(50)}
    assert len(codes) == 50 and all(len(c) == 11 and c[5] == "-" for c in codes)
    code = next(iter(codes))
    assert totp._recovery_hash(code) == totp._recovery_hash(code.upper().replace("-", " "))


def test_page_cursors_round_trip_and_reject_junk() -> None:
    when = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    token = convert.cursor_out(when, "acc_1")
    assert convert.cursor_in(token) == f"{when.isoformat()}|acc_1"
    assert convert.cursor_in("") == ""
    for junk in ("not-base64!!", "Zm9v"):
        with pytest.raises(GrainhouseError) as err:
            convert.cursor_in(junk)
        assert err.value.kind is Kind.INVALID
    assert convert.page_size(0) == 50 and convert.page_size(10_000) == 500


def _mailer(dev: bool, host: str = "") -> Mailer:
    return Mailer(MailConfig(host, 25, "", "", "gh@localhost", False, dev))


async def test_dev_mode_mail_goes_to_the_log_and_is_refused_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="grainhouse.auth.mail"):
        await _mailer(True).send("a@example.org", "s", "body", "http://x/?code=ghx_abc")
    assert any(getattr(r, "link", "") == "http://x/?code=ghx_abc" for r in caplog.records)
    assert not _mailer(False).config.configured
    with pytest.raises(GrainhouseError) as err:
        await _mailer(False).send("a@example.org", "s", "body", "l")
    assert err.value.kind is Kind.CONFLICT


async def test_dev_login_is_refused_when_dev_mode_is_off() -> None:
    off = logins.Logins(
        None,  # type: ignore[arg-type]  # refused before any database use
        None,  # type: ignore[arg-type]
        _mailer(False),
        sessions.Timeouts(60, 120),
        ratelimit.Policy(),
        dev_mode=False,
        public_url="http://localhost",
        email_code_ttl=60,
    )
    with pytest.raises(GrainhouseError) as err:
        await off.dev("Dana", True, logins.Client())
    assert err.value.kind is Kind.CONFLICT  # FAILED_PRECONDITION on the wire
    with pytest.raises(GrainhouseError) as err2:
        await off.start_email("a@example.org", "http://localhost/login", logins.Client())
    assert err2.value.kind is Kind.CONFLICT  # email login not configured
