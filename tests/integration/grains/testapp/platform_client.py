"""The probe's Platform client: calls grain.capnp's `Platform` on the bridge's app socket.

Owns: one Cap'n Proto connection to `@grainhouse/api` (made on first use, dropped on demand)
and the wake locks the probe holds, all on one thread running an asyncio loop with pycapnp's
kj loop (the HTTP handler threads submit calls to it).
Trusts: the bridge's answers.
Never: imports pycapnp from anywhere but the read-only copy every grain gets
(/opt/grainhouse/capnp), nor the schema from anywhere but /opt/grainhouse/proto.
"""

import asyncio
import importlib.util
import sys
import threading

CAPNP_DIR = "/opt/grainhouse/capnp"
SCHEMA = "/opt/grainhouse/proto/grain.capnp"
ADDRESS = "\0grainhouse/api"


def _load_capnp():
    spec = importlib.util.spec_from_file_location(
        "capnp", f"{CAPNP_DIR}/__init__.py", submodule_search_locations=[CAPNP_DIR]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["capnp"] = module
    spec.loader.exec_module(module)
    return module


class PlatformClient:
    def __init__(self):
        self.capnp = _load_capnp()
        self.schema = self.capnp.load(SCHEMA)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.platform = None
        self.client = None
        self.locks = []
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            async with self.capnp.kj_loop():
                self.ready.set()
                await asyncio.Event().wait()  # runs until the process ends

        self.loop.run_until_complete(main())

    def call(self, make, timeout=20):
        """Run `make()` (a coroutine function using self.platform) on the capnp thread."""
        return asyncio.run_coroutine_threadsafe(self._with_platform(make), self.loop).result(
            timeout
        )

    async def _with_platform(self, make):
        if self.platform is None:
            stream = await self.capnp.AsyncIoStream.create_unix_connection(path=ADDRESS)
            self.client = self.capnp.TwoPartyClient(stream)
            self.platform = self.client.bootstrap().cast_as(self.schema.Platform)
        return await make()

    # -- the calls the probe's routes make ------------------------------------------------

    def identity(self, session_id):
        async def go():
            reply = await self.platform.getIdentity(session_id)
            return {"identity": reply.identity.to_dict(), "permissions": list(reply.permissions)}

        return self.call(go)

    def stay_awake(self, reason):
        async def go():
            reply = await self.platform.stayAwake(reason)
            self.locks.append(reply.lock)
            return {"held": len(self.locks)}

        return self.call(go)

    def release(self):
        async def go():
            for lock in self.locks:
                await lock.release()
            self.locks.clear()
            return {"held": 0}

        return self.call(go)

    def drop(self):
        """Close the connection without releasing: the locks must end with it."""

        async def go():
            self.locks.clear()
            self.platform = None
            if self.client is not None:
                self.client.close()
                self.client = None
            return {"held": 0}

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(20)

    def usage(self):
        async def go():
            reply = await self.platform.getStorageUsage()
            return {"size": reply.sizeBytes, "quota": reply.quotaBytes}

        return self.call(go)

    def log(self, level, message, times):
        async def go():
            for _ in range(times):
                await self.platform.log(level, message)
            return {"sent": times}

        return self.call(go)
