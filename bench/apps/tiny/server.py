"""Bench app: the smallest grain that answers HTTP (stdlib asyncio), for "200 grains at once".

Owns: nothing (no state, no files).
Trusts: nothing it is sent (it reads up to the end of each request head and answers "ok").
Never: listens anywhere but 127.0.0.1:$PORT; reads request bodies (GET only).
"""

import asyncio
import os

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


async def serve(reader, writer):
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ.get("PORT", "8000")))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
