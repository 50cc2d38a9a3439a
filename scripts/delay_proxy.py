#!/usr/bin/env python3
"""A TCP proxy that adds a fixed delay each way: round-trip time for tests and benchmarks on
machines whose kernel has no netem queueing discipline.

    python3 scripts/delay_proxy.py --listen 127.0.0.1:0 --target HOST:PORT --rtt-ms 10

Prints "LISTENING HOST:PORT" once bound. Each chunk read from one side is written to the other
half the round-trip time after it arrived, in order, so the delay adds to the link's own and
bandwidth is not limited. Ends when its standard input closes (if a pipe) or on SIGTERM.
"""
import argparse
import asyncio
import os
import signal
import stat
import sys
import time


async def pump(reader, writer, delay):
    queue = asyncio.Queue()

    async def read():
        try:
            while True:
                data = await reader.read(1 << 20)
                await queue.put((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((time.monotonic(), b""))

    async def write():
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    await asyncio.gather(read(), write())


async def serve(listen, target, delay):
    host, port = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)

    async def handle(reader, writer):
        try:
            treader, twriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, twriter, delay), pump(treader, writer, delay))

    server = await asyncio.start_server(handle, host, int(port))
    bound = server.sockets[0].getsockname()
    print(f"LISTENING {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--target", required=True)
    p.add_argument("--rtt-ms", type=float, default=0.0)
    a = p.parse_args()
    if not 0 <= a.rtt_ms <= 10000:
        sys.exit("error: --rtt-ms must be between 0 and 10000")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    mode = os.fstat(0).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        import threading

        def watch():
            while os.read(0, 1):
                pass
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    asyncio.run(serve(a.listen, a.target, a.rtt_ms / 2000.0))


if __name__ == "__main__":
    main()
