"""PostgreSQL, NATS and the auth service, real processes on free ports, for the auth suite.

Only what auth needs is started (not grainmgr, backup or the frontend), so this suite does not
depend on the other services' health. Auth runs in dev mode (dev logins, email links in its log)
with small rate-limit numbers so the brute-force tests reach "slowed" and "blocked" quickly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from grainhouse_cli.datadir import DataDir
from grainhouse_cli.postgres import DBNAME, EmbeddedPostgres
from grainhouse_common import provision
from grainhouse_proto import auth_pb2, auth_pb2_grpc, common_pb2
from tests.support.ports import free_port

PUBLIC_URL = "http://localhost:6080"
STACK_ENV = {
    "GRAINHOUSE_DEV_MODE": "1",
    "GRAINHOUSE_PUBLIC_URL": PUBLIC_URL,
    "GRAINHOUSE_AUTH_LOGIN_FREE_FAILURES": "5",
    "GRAINHOUSE_AUTH_LOGIN_BLOCK_AFTER": "7",
    "GRAINHOUSE_AUTH_LOGIN_BASE_DELAY_SECONDS": "4",
    "GRAINHOUSE_AUTH_LOGIN_MAX_DELAY_SECONDS": "4",
    "GRAINHOUSE_AUTH_LOGIN_BLOCK_SECONDS": "600",
    # Housekeeping every second, so a test sees a dead row go (test_guesses_and_housekeeping).
    "GRAINHOUSE_AUTH_HOUSEKEEPING_INTERVAL_SECONDS": "1",
}
PASSWORD = "violet-harbour-tangerine-47"
OIDC_REDIRECT = PUBLIC_URL + "/login/oidc/corp/callback"
OIDC_USER = {"sub": "corp-ada", "email": "ada@corp.example", "email_verified": True, "name": "Ada"}


def wait_for(predicate: Any, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} not ready within {timeout}s\n{tail}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class AuthStack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "var"
        self.logs_dir = self.data_dir / "logs"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        self.services: dict[str, dict[str, str]] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        out = open(self.logs_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(out)
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        data = DataDir(self.data_dir)
        data.prepare()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
        pg = EmbeddedPostgres(data, free_port())
        pg.init_if_needed()
        self._spawn("postgres", pg.command(), base_env)
        wait_for(pg.ready, "PostgreSQL", 60, self.logs_dir / "postgres.log")
        pg.ensure_database()
        sdb = provision.ensure(pg.admin_url(DBNAME), DBNAME, "auth", secrets.token_urlsafe(24))
        url_file = data.secrets / "auth-database-url"
        url_file.write_text(sdb.url("127.0.0.1", pg.port, DBNAME))
        url_file.chmod(0o600)
        self.db_url_file = url_file

        nats_port, nats_mon = free_port(), free_port()
        nats_bin = str(Path(sys.executable).parent / "nats-server")
        self._spawn(
            "nats",
            [nats_bin, "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(nats_mon)],
            base_env,
        )
        wait_for(lambda: http_ok(f"http://127.0.0.1:{nats_mon}/healthz"), "NATS", 30)
        self.nats_url = f"nats://127.0.0.1:{nats_port}"

        # A real OpenID provider (Authlib's server side) in its own process.
        op_port = free_port()
        self.oidc_issuer = f"http://127.0.0.1:{op_port}"
        op_config = {
            "port": op_port,
            "issuer": self.oidc_issuer,
            "client_id": "grainhouse",
            "client_secret": secrets.token_urlsafe(16),
            "redirect_uris": [OIDC_REDIRECT],
            "user": OIDC_USER,
        }
        provider = str(Path(__file__).with_name("oidc_provider.py"))
        self._spawn("oidc", [sys.executable, provider, json.dumps(op_config)], base_env)
        wait_for(
            lambda: http_ok(self.oidc_issuer + "/.well-known/openid-configuration"),
            "OpenID provider",
            30,
            self.logs_dir / "oidc.log",
        )
        providers = {
            "corp": {
                "issuer": self.oidc_issuer,
                "client_id": "grainhouse",
                "client_secret": op_config["client_secret"],
                "redirect_uris": [OIDC_REDIRECT],
            }
        }

        grpc_port, metrics_port = free_port(), free_port()
        env = dict(base_env)
        env.update(STACK_ENV)
        env.update(
            {
                "GRAINHOUSE_DATA_DIR": str(self.data_dir),
                "GRAINHOUSE_NATS_URL": self.nats_url,
                "GRAINHOUSE_AUTH_DATABASE_URL_FILE": str(url_file),
                "GRAINHOUSE_AUTH_LISTEN": f"127.0.0.1:{grpc_port}",
                "GRAINHOUSE_AUTH_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "GRAINHOUSE_AUTH_OIDC_PROVIDERS": json.dumps(providers),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._spawn("auth", [sys.executable, "-m", "grainhouse_auth"], env)
        self.services = {
            "auth": {
                "grpc": f"127.0.0.1:{grpc_port}",
                "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            }
        }
        key = self.data_dir / "auth" / "operator.key"
        wait_for(key.exists, "auth's operator key", 60, self.logs_dir / "auth.log")

    @property
    def auth_addr(self) -> str:
        return self.services["auth"]["grpc"]

    @property
    def operator_key(self) -> str:
        return (self.data_dir / "auth" / "operator.key").read_text().strip()

    def auth_log(self) -> str:
        return (self.logs_dir / "auth.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs_dir.glob("*")))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for fh in self._files:
            fh.close()


@pytest.fixture(scope="session")
def auth_stack() -> Iterator[AuthStack]:
    # PostgreSQL runs as `postgres` when we are root: it must be able to enter the directory.
    root = Path(tempfile.mkdtemp(prefix="gh-auth-", dir="/tmp"))
    root.chmod(0o711)
    s = AuthStack(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if not os.environ.get("GH_AUTH_KEEP_LOGS"):  # set it to read the logs after a failure
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stub(auth_stack: AuthStack) -> Iterator[auth_pb2_grpc.AuthStub]:
    channel = grpc.insecure_channel(auth_stack.auth_addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = auth_pb2_grpc.AuthStub(channel)
    # The service answers UNAVAILABLE until its database and NATS are ready.
    deadline = time.monotonic() + 60
    while True:
        try:
            stub.GetSession(auth_pb2.GetSessionRequest(session_secret="ghs_probe"), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                break  # the database answered
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield stub
    channel.close()


# ---- small helpers the tests share ---------------------------------------------------------


def code_of(call: Any) -> grpc.StatusCode:
    """Run `call()`, expecting a gRPC error; returns its code."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded but was expected to fail")


def session_cred(secret: str) -> auth_pb2.Credential:
    return auth_pb2.Credential(session_secret=secret)


def bearer(secret: str) -> auth_pb2.Credential:
    return auth_pb2.Credential(bearer_secret=secret)


def link_cred(secret: str) -> auth_pb2.Credential:
    return auth_pb2.Credential(share_link_secret=secret)


@dataclass
class User:
    account_id: str
    email: str
    session: str  # session secret
    name: str

    @property
    def cred(self) -> auth_pb2.Credential:
        return session_cred(self.session)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def dev_user(stub: auth_pb2_grpc.AuthStub, name: str | None = None, admin: bool = False) -> User:
    name = name or unique("dev")
    r = stub.DevLogin(auth_pb2.DevLoginRequest(display_name=name, is_admin=admin), timeout=10)
    s = r.session
    return User(s.account.account_id, s.account.email, s.session_secret, name)


def invited_user(
    stub: auth_pb2_grpc.AuthStub, admin: User, password: str = PASSWORD, email: str | None = None
) -> User:
    email = email or f"{unique('u')}@example.org"
    inv = stub.CreateInvitation(
        auth_pb2.CreateInvitationRequest(caller=admin.cred, email=email), timeout=10
    )
    r = stub.CreateAccount(
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv.invitation_secret,
            details=auth_pb2.NewAccountDetails(
                email=email, display_name=email.split("@")[0], password=password
            ),
        ),
        timeout=10,
    )
    s = r.session
    return User(s.account.account_id, email, s.session_secret, s.account.display_name)


VIEW_INFO = common_pb2.ViewInfo(
    permissions=[common_pb2.PermissionDef(name=n) for n in ("read", "comment", "edit")],
    roles=[
        common_pb2.RoleDef(name="viewer", permissions=["read"]),
        common_pb2.RoleDef(name="commenter", permissions=["read", "comment"]),
        common_pb2.RoleDef(name="editor", permissions=["read", "comment", "edit"], is_default=True),
    ],
)


def new_grain(stub: auth_pb2_grpc.AuthStub, owner: User) -> str:
    grain_id = unique("grain")
    stub.RegisterGrain(
        auth_pb2.RegisterGrainRequest(
            grain_id=grain_id,
            owner_account_id=owner.account_id,
            app_id="app-test",
            view_info=VIEW_INFO,
            title="Test grain",
        ),
        timeout=10,
    )
    return grain_id


def authorize(
    stub: auth_pb2_grpc.AuthStub, cred: auth_pb2.Credential, grain_id: str
) -> auth_pb2.AuthorizeResponse:
    return stub.Authorize(auth_pb2.AuthorizeRequest(credential=cred, grain_id=grain_id), timeout=10)
