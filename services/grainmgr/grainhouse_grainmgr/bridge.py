"""The grain's first process (PID 1 inside the sandbox): start the app, serve grainmgr on fd 3.

Owns: the app's process (start, reap, SIGTERM/SIGKILL at shutdown), the grain's live sessions
and prepared stream keys, and each stream's connection to the app until it is handed to
grainmgr (then grainmgr owns it: the bridge keeps no copy and sees no byte of it).
Trusts: grainmgr completely (fd 3 and fd 4 are its only channels): its config in the
`GRAINHOUSE_BRIDGE` environment variable, its calls on fd 3.
Never: imports anything but the standard library, pycapnp and its siblings `bridge_capnp` and
`bridge_platform`
(it runs on Debian's /usr/bin/python3 inside the sandbox, with only the pycapnp package
mounted read-only next to it); parses HTTP or relays bytes; passes `GRAINHOUSE_*` variables to
the app; reads fd 4.

Channels (see proto/grain.capnp, section 5):
  fd 3  Cap'n Proto two-party connection; the bridge exports `Bridge` as bootstrap, grainmgr
        exports `PlatformBackend` (what the bridge's `Platform` forwards, see bridge_platform).
  @grainhouse/api  the abstract socket where the app may call `Platform` (bridge_platform).
  fd 4  a SOCK_SEQPACKET socket on which the bridge sends grainmgr, per stream asked for with
        `Bridge.openStream`, one datagram holding the 32-byte stream key with the stream's
        socket attached (SCM_RIGHTS): a socket the bridge connected to the app. grainmgr's
        relay then splices the frontend's connection straight to it: one relay hop instead of
        two (the bridge used to take a socket pair's end here and splice it to the app).
        An fd handed over a private socket needs no listener and no path a grain could race
        for (the schema's `streamSocket` path is unused).
Run as: /usr/bin/python3 -I -S -B <runtime>/bridge.py   (config in GRAINHOUSE_BRIDGE, JSON; the
app usually already started by the sandbox next to us, its pid in GRAINHOUSE_CHILD_PID).
"""

from __future__ import annotations

import json
import os

CONTROL_FD = 3
STREAM_FD = 4


def spawn_app(config: dict[str, Any]) -> int:
    """Start the app: cwd /var, fds 3 and 4 not inherited (only the bridge speaks on them), the
    manifest's env plus PORT and no `GRAINHOUSE_*` variable, in its own process group."""
    os.set_inheritable(CONTROL_FD, False)
    os.set_inheritable(STREAM_FD, False)
    os.chdir("/var")
    argv = list(config["argv"])
    # posix_spawn: no Python code runs between fork and exec in the child.
    return os.posix_spawn(argv[0], argv, app_env(config), setsid=True)


def app_env(config: dict[str, Any]) -> dict[str, str]:
    """The manifest's env without `GRAINHOUSE_*`, plus PORT, HOME and PATH by default. grainmgr
    imports this same function for the spec when the sandbox starts the app."""
    env = {k: v for k, v in dict(config["env"]).items() if not k.startswith("GRAINHOUSE_")}
    if config.get("port") is not None:
        env["PORT"] = str(config["port"])
    env.setdefault("HOME", "/var")
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


# The app starts before the rest of the bridge is imported: asyncio and friends cost tens of
# ms of CPU (more on a busy machine) that would otherwise come before the app's own start in
# every cold open. On any error here, App.start() tries again and reports it.
EARLY_PID = 0
if __name__ == "__main__":
    try:
        # Earlier still: the sandbox's init started the app just before exec'ing us (launcher's
        # SpawnSpec.child_argv) and says its pid here; it is our child, ours to reap.
        EARLY_PID = int(os.environ.get("GRAINHOUSE_CHILD_PID", "0")) or spawn_app(
            json.loads(os.environ.get("GRAINHOUSE_BRIDGE", ""))
        )
    except (ValueError, KeyError, TypeError, OSError):
        EARLY_PID = 0

# ruff: noqa: E402 - the imports below come after the early start above, on purpose.
import array
import asyncio
import contextlib
import errno
import gc
import importlib.util
import signal
import socket
import sys
import time
from types import ModuleType
from typing import Any, NoReturn


def _sibling(name: str) -> ModuleType:
    """A module next to this file, for the bridge run as a script inside the grain (where the
    package is not importable: only its directory is mounted, and -I leaves it off sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"grainhouse_bridge_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no {name} next to the bridge")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:  # the fork server imports the bridge as part of its package (the bridge in the init)
    from grainhouse_grainmgr import bridge_capnp
    from grainhouse_grainmgr import bridge_platform as platform
except ImportError:  # run as a script inside the grain
    bridge_capnp = _sibling("bridge_capnp")
    platform = _sibling("bridge_platform")

KEY_BYTES = 32
KEY_TTL_SECONDS = 30.0
MAX_STREAMS = 256
MAX_PREPARED_KEYS = 1024
# How often the app's port is tried while it starts: often at first (every ms of a cold open
# counts, and a refused loopback connect costs microseconds), then gently.
POLL_SECONDS = 0.02
FAST_POLL_SECONDS = 0.001
FAST_POLL_FOR_SECONDS = 2.0
# A loopback connect while the app starts is answered at once (refused, or accepted into the
# backlog); only a full backlog waits, and that already means the app listens.
PROBE_TIMEOUT_SECONDS = 0.002
# A ping while the app starts is answered when it listens, or after this long (far inside
# grainmgr's ping timeout).
PING_HOLD_SECONDS = 0.25


def write_log(text: str) -> None:
    """Lines into the grain's log (stdout is the log pipe)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def say(message: str) -> None:
    write_log(f"[bridge] {message}\n")


class App:
    """The app's process and the address it listens on."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.argv: list[str] = list(config["argv"])
        self.env: dict[str, str] = dict(config["env"])
        self.port: int | None = config.get("port")
        self.unix_socket: str | None = config.get("unix_socket")
        self.start_timeout: float = float(config.get("start_timeout", 30))
        self.pid = 0
        self.exit_status: int | None = None
        self.listening = False
        self.listening_now = asyncio.Event()

    def start(self) -> None:
        self.pid = EARLY_PID or spawn_app(self.config)
        say(f"started the app: {' '.join(self.argv)[:300]}")

    async def connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        if self.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self.unix_socket
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = ("127.0.0.1", self.port)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def listens(self) -> bool:
        """Whether the app accepts connections now: one synchronous loopback connect.

        Cheaper than an event-loop connect (≈25 µs against ≈150 µs of CPU a try here): the
        bridge tries every millisecond while the app starts, on the CPU the app starts on. On
        loopback a connect is answered at once; a full backlog (no answer within the timeout)
        means a listener too."""
        if self.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self.unix_socket
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("127.0.0.1", self.port)
        with sock:
            sock.settimeout(PROBE_TIMEOUT_SECONDS)
            return sock.connect_ex(address) in (0, errno.EAGAIN, errno.EINPROGRESS)

    async def wait_listening(self) -> None:
        started = time.monotonic()
        where = self.unix_socket or f"127.0.0.1:{self.port}"
        while self.exit_status is None:
            try:
                listens = self.listens()
            except OSError:  # no socket to try with (fds exhausted): try again later
                listens = False
            if listens:
                self.listening = True
                self.listening_now.set()
                say(f"the app listens on {where} after {time.monotonic() - started:.2f}s")
                return
            if time.monotonic() - started > self.start_timeout:
                say(
                    f"the app did not listen on {where} within {self.start_timeout:.0f}s: check "
                    "the manifest's listen setting and the app's output above"
                )
                return
            fast = time.monotonic() - started < FAST_POLL_FOR_SECONDS
            await asyncio.sleep(FAST_POLL_SECONDS if fast else POLL_SECONDS)

    def signal(self, sig: int) -> None:
        if self.pid and self.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)


class Grain:
    """Sessions, prepared stream keys and the streams being connected for this grain."""

    def __init__(self, app: App, view_info: dict[str, Any]) -> None:
        self.app = app
        self.view_info = view_info
        self.sessions: dict[str, dict[str, Any]] = {}
        self.keys: dict[bytes, tuple[str, float]] = {}
        self.channel: socket.socket | None = None  # fd 4, set by serve()
        self.opening = 0  # streams being connected to the app right now
        self.handed = 0  # streams handed to grainmgr since the start (ping's openStreams)
        self.started = time.monotonic()
        self.shutting_down = False
        self.done = asyncio.Event()

    # -- streams ------------------------------------------------------------------------------

    def prepare(self, session_id: str, key: bytes) -> None:
        now = time.monotonic()
        for stale in [k for k, (_, t) in self.keys.items() if t < now]:
            del self.keys[stale]
        if session_id not in self.sessions:
            raise ValueError("unknown session id")
        if len(key) != KEY_BYTES:
            raise ValueError("a stream key is 32 bytes")
        if self.opening >= MAX_STREAMS or len(self.keys) >= MAX_PREPARED_KEYS:
            raise OverflowError("too many streams")
        self.keys[key] = (session_id, now + KEY_TTL_SECONDS)

    async def hand_over(self, key: bytes) -> None:
        """Connect to the app for a prepared key (waiting for a starting app to listen) and
        send the connected socket to grainmgr on fd 4 under that key; no copy is kept. Fails
        (ValueError, OSError) when the key is unknown, its session ended meanwhile, the app
        cannot be reached or fd 4 stays full."""
        entry = self.keys.get(key)
        if entry is None or self.channel is None:
            raise ValueError("unknown stream key")
        self.opening += 1
        try:
            if not self.app.listening and self.app.exit_status is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.app.listening_now.wait(), self.app.start_timeout)
            inside = await self.app.connect()
        except OSError as exc:
            self.keys.pop(key, None)
            say(f"cannot reach the app for a stream: {exc.strerror}")
            raise
        finally:
            self.opening -= 1
        try:
            session = self.sessions.get(entry[0])
            if self.keys.pop(key, None) is None or session is None:
                raise ValueError("the session ended")  # close_session while we connected
            await send_stream(self.channel, key, inside)
            session["streams"] += 1
            self.handed += 1
        finally:
            inside.close()  # grainmgr holds its own copy now (or the stream failed)

    def params_of(self, session_id: str) -> dict[str, Any] | None:
        """A live session's SessionParams (as a dict), for Platform.getIdentity."""
        found = self.sessions.get(session_id)
        return None if found is None else found["params"]

    def close_session(self, session_id: str) -> None:
        """Forget a session and its unused keys. Its open streams are grainmgr's: grainmgr
        ends a session only when none is open, and cuts them all when the grain stops."""
        if self.sessions.pop(session_id, None) is None:
            return
        for key in [k for k, (s, _) in self.keys.items() if s == session_id]:
            del self.keys[key]

    # -- shutdown -----------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            say("shutting down")
            for session_id in list(self.sessions):
                self.close_session(session_id)
            self.app.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.app.exit_status is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.app.signal(signal.SIGKILL)
            self.done.set()
        await self.done.wait()


def make_bridge_server(schema: Any, grain: Grain) -> Any:
    """The `Bridge` capability (bootstrap of fd 3) and its `SessionHandle`s."""

    class SessionHandle(schema.SessionHandle.Server):  # type: ignore[misc]  # pycapnp's run-time base
        def __init__(self, session_id: str) -> None:
            self.session_id = session_id

        async def close(self, **_: Any) -> None:
            grain.close_session(self.session_id)

        def __del__(self) -> None:
            # Dropping the last reference ends the session (grain.capnp, SessionHandle).
            with contextlib.suppress(Exception):
                grain.close_session(self.session_id)

    class Bridge(schema.Bridge.Server):  # type: ignore[misc]  # pycapnp's run-time base
        async def getViewInfo(self, **_: Any) -> Any:
            return schema.ViewInfo.new_message(**grain.view_info)

        async def newSession(self, params: Any, **_: Any) -> Any:
            if grain.shutting_down:
                raise RuntimeError("the grain is shutting down")
            sid = params.sessionId
            if not sid or sid in grain.sessions:
                raise ValueError("session ids are never reused")
            grain.sessions[sid] = {"params": params.to_dict(), "streams": 0}
            return SessionHandle(sid)

        async def openStream(self, sessionId: str, streamKey: bytes, **_: Any) -> None:
            if grain.shutting_down:
                raise RuntimeError("the grain is shutting down")
            key = bytes(streamKey)
            grain.prepare(sessionId, key)
            await grain.hand_over(key)  # the socket is on fd 4 before this call answers

        async def ping(self, **_: Any) -> Any:
            if not grain.app.listening and grain.app.exit_status is None:
                # grainmgr pings until appListening: answering the moment the app listens
                # (instead of at grainmgr's next poll) takes up to one poll off a cold open.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(grain.app.listening_now.wait(), PING_HOLD_SECONDS)
            return schema.Health.new_message(
                appListening=grain.app.listening,
                uptimeSeconds=int(time.monotonic() - grain.started),
                openStreams=grain.handed,
                liveSessions=len(grain.sessions),
            )

        async def shutdown(self, graceSeconds: int, **_: Any) -> None:
            await grain.shutdown(float(graceSeconds or 10))

    return Bridge()


async def send_stream(channel: socket.socket, key: bytes, sock: socket.socket) -> None:
    """One datagram on fd 4: `key` with `sock` attached. grainmgr reads fd 4 in batches; a
    full socket is waited on a little, then the stream fails."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
    for _ in range(200):
        try:
            channel.sendmsg([key], rights)
            return
        except BlockingIOError:
            await asyncio.sleep(0.01)
    raise OSError("grainmgr does not read fd 4")


def reap(grain: Grain) -> None:
    """PID 1 duty: collect every exited child; note the app's status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == grain.app.pid:
            grain.app.exit_status = os.waitstatus_to_exitcode(status)
            say(f"the app exited with status {grain.app.exit_status}")
            grain.done.set()


async def serve(config: dict[str, Any]) -> int:
    app = App(config)
    grain = Grain(app, config.get("view_info", {"permissions": [], "roles": []}))
    # The app must not inherit grainmgr's channels: only the bridge speaks on fds 3 and 4.
    os.set_inheritable(CONTROL_FD, False)
    os.set_inheritable(STREAM_FD, False)
    os.chdir("/var")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, reap, grain)
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(grain.shutdown(10)))
    app.start()
    reap(grain)  # an app started early may have exited before SIGCHLD had a handler
    # pycapnp and the schema load while the app starts (≈100 ms of a cold open otherwise).
    capnp = bridge_capnp.load_capnp(config["capnp_package"])
    schema = bridge_capnp.PRELOADED_SCHEMA or capnp.load(config["schema"])
    channel = socket.socket(fileno=STREAM_FD)
    channel.setblocking(False)
    grain.channel = channel  # written by hand_over, never read: grainmgr only reads it
    async with capnp.kj_loop():
        control = socket.socket(fileno=CONTROL_FD)
        stream = await capnp.AsyncIoStream.create_unix_connection(sock=control)
        server = capnp.TwoPartyServer(stream, bootstrap=make_bridge_server(schema, grain))
        waiter = loop.create_task(app.wait_listening())
        try:  # without it the grain runs as an app that never asks for Platform does
            api = await platform.serve(capnp, schema, server, grain.params_of, write_log)
        except OSError as exc:
            api = None
            say(f"cannot serve Platform to the app: {exc.strerror or exc}")
        disconnected = asyncio.ensure_future(server.on_disconnect())
        finished = loop.create_task(grain.done.wait())
        await asyncio.wait({disconnected, finished}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if api is not None:
            api.close()
        if disconnected.done():
            say("grainmgr closed the control channel")
        # Let a shutdown answer reach grainmgr before the connection goes away.
        await asyncio.sleep(0.05)
    if grain.app.exit_status is None:
        grain.app.signal(signal.SIGKILL)
    reap(grain)
    status = grain.app.exit_status
    return 0 if grain.shutting_down else (status if status and status > 0 else 1)


def run_in_init(env: dict[str, str], child_pid: int) -> NoReturn:
    """Be the bridge in this process (the grain's init, sandboxed and locked down already),
    instead of exec'ing a fresh interpreter: the fork server imported this module, asyncio
    and pycapnp before it forked, so the bridge is ready in milliseconds and its start no
    longer competes with the app's for the CPU. `env` is what the exec would have got; the
    app (started by the init) is `child_pid`, 0 if none. Never returns.

    The process image is the fork server's: the init made itself non-dumpable before calling
    this, so the app (same uid, no capabilities) cannot read it through /proc/1 (mem, maps).
    Nothing may be imported here that the fork server did not import: the interpreter's own
    files are not in the grain.
    """
    global EARLY_PID
    code = 1
    try:
        # What an interpreter's own start would have set (the sandbox reset every signal).
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        # The fork server runs without the collector; ours must run (asyncio and pycapnp make
        # cycles), but never over the inherited objects: freezing them keeps their pages
        # shared with the fork server, and none of them is ever finalized here.
        gc.freeze()
        gc.enable()
        os.environ.clear()
        os.environ.update(env)
        EARLY_PID = child_pid
        code = main()
    except BaseException as exc:  # PID 1 reports and exits, whatever it was
        with contextlib.suppress(Exception):
            say(f"the bridge failed: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


def main() -> int:
    raw = os.environ.get("GRAINHOUSE_BRIDGE", "")
    try:
        config = json.loads(raw)
    except ValueError:
        say("no valid GRAINHOUSE_BRIDGE configuration")
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
