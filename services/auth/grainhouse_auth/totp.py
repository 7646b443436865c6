"""The TOTP second factor (RFC 6238 via pyotp) and its recovery codes.

Owns: the `totp` / `totp_pending` credentials and `recovery_codes` rows of an account.
Trusts: pyotp for the code arithmetic; the server clock.
Never: returns a seed except at enrolment, or a recovery code except when it is made; accepts a
code twice (the last accepted time step is stored, so a replay inside its window fails).
"""

from __future__ import annotations

import secrets
import time

import pyotp

from grainhouse_auth import credentials
from grainhouse_auth.store import Conn, many, one, run

ISSUER = "Grainhouse"
RECOVERY_CODES = 10
_WINDOW = 1  # one step either side: tolerates 30 s of clock skew


def normalise_code(code: str) -> str:
    return "".join(code.split())


def new_recovery_code() -> str:
    raw = secrets.token_hex(5)  # 40 bits, shown as xxxxx-xxxxx
    return f"{raw[:5]}-{raw[5:]}"


def _recovery_hash(code: str) -> bytes:
    return credentials.hash_secret(normalise_code(code).lower().replace("-", ""))


async def enroll(conn: Conn, account_id: str, label: str) -> tuple[str, str]:
    seed = pyotp.random_base32()
    await run(
        conn,
        "INSERT INTO credentials (account_id, kind, secret) VALUES (%s, 'totp_pending', %s)"
        " ON CONFLICT (account_id, kind) DO UPDATE SET secret = EXCLUDED.secret,"
        " created_at = now()",
        (account_id, seed),
    )
    return seed, pyotp.TOTP(seed).provisioning_uri(name=label, issuer_name=ISSUER)


def matching_step(seed: str, code: str, now: float | None = None) -> int | None:
    """The time step a code belongs to (within the window), or None."""
    code = normalise_code(code)
    if not (len(code) == 6 and code.isdigit()):
        return None
    t = time.time() if now is None else now
    totp = pyotp.TOTP(seed)
    step_now = int(t) // totp.interval
    for step in range(step_now - _WINDOW, step_now + _WINDOW + 1):
        if secrets.compare_digest(totp.at(step * totp.interval), code):
            return step
    return None


async def _check(conn: Conn, account_id: str, kind: str, code: str) -> bool:
    row = await one(
        conn,
        "SELECT secret, totp_last_step FROM credentials WHERE account_id = %s AND kind = %s"
        " FOR UPDATE",
        (account_id, kind),
    )
    if row is None:
        return False
    step = matching_step(row["secret"], code)
    if step is None or step <= row["totp_last_step"]:
        return False
    await run(
        conn,
        "UPDATE credentials SET totp_last_step = %s WHERE account_id = %s AND kind = %s",
        (step, account_id, kind),
    )
    return True


async def has_pending(conn: Conn, account_id: str) -> bool:
    row = await one(
        conn,
        "SELECT 1 FROM credentials WHERE account_id = %s AND kind = 'totp_pending'",
        (account_id,),
    )
    return row is not None


async def confirm(conn: Conn, account_id: str, code: str) -> list[str] | None:
    """Turn the pending seed on if `code` fits; returns the new recovery codes, else None."""
    async with conn.transaction():
        if not await _check(conn, account_id, "totp_pending", code):
            return None
        await run(
            conn,
            "UPDATE credentials SET kind = 'totp' WHERE account_id = %s AND kind = 'totp_pending'",
            (account_id,),
        )
        return await replace_recovery_codes(conn, account_id)


async def verify(conn: Conn, account_id: str, code: str) -> bool:
    async with conn.transaction():
        return await _check(conn, account_id, "totp", code)


async def use_recovery_code(conn: Conn, account_id: str, code: str) -> bool:
    row = await one(
        conn,
        "UPDATE recovery_codes SET used_at = now() WHERE account_id = %s AND code_hash = %s"
        " AND used_at IS NULL RETURNING 1",
        (account_id, _recovery_hash(code)),
    )
    return row is not None


async def replace_recovery_codes(conn: Conn, account_id: str) -> list[str]:
    codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
    await run(conn, "DELETE FROM recovery_codes WHERE account_id = %s", (account_id,))
    for code in codes:
        await run(
            conn,
            "INSERT INTO recovery_codes (account_id, code_hash) VALUES (%s, %s)",
            (account_id, _recovery_hash(code)),
        )
    return codes


async def disable(conn: Conn, account_id: str) -> None:
    await run(
        conn,
        "DELETE FROM credentials WHERE account_id = %s AND kind IN ('totp', 'totp_pending')",
        (account_id,),
    )
    await run(conn, "DELETE FROM recovery_codes WHERE account_id = %s", (account_id,))


async def unused_recovery_codes(conn: Conn, account_id: str) -> int:
    rows = await many(
        conn,
        "SELECT 1 FROM recovery_codes WHERE account_id = %s AND used_at IS NULL",
        (account_id,),
    )
    return len(rows)
