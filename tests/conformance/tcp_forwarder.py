#!/usr/bin/env python3
"""Stand-in "proxy" for testing the conformance harness itself (not wsproxy).

    python tcp_forwarder.py LISTEN_PORT TARGET_PORT [--corrupt-rsv]

A plain byte-for-byte TCP forwarder on 127.0.0.1: through it every Autobahn case must
behave exactly as direct (run.py must report no difference). With --corrupt-rsv it sets
RSV1 on the first frame the server sends after its 101 head, which makes the fuzzer fail
the connection: run.py must then report differences (a known-bad proxy).
"""
import argparse
import asyncio


async def pipe(reader, writer, corrupt=False):
    state = "head" if corrupt else "done"  # head -> next (flip RSV1 of next byte) -> done
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if state == "head":
                buf += data
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    continue
                data, buf, state = buf, b"", "next"
                rest = data[i + 4:]
                writer.write(data[:i + 4])
                data = rest
            if state == "next" and data:
                data = bytes([data[0] | 0x40]) + data[1:]
                state = "done"
            if data:
                writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_port", type=int)
    ap.add_argument("--corrupt-rsv", action="store_true")
    a = ap.parse_args()

    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", a.target_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, uw), pipe(ur, cw, corrupt=a.corrupt_rsv))

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
