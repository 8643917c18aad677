"""Write the seed corpora (fuzz/corpus/<harness>/) from the shared test vectors.

A few valid and invalid examples each, with the harness's leading control bytes
(see the harness docstrings). Run again after changing the selection:
``python fuzz/make_seeds.py``; the files are named by content, so reruns add nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
CORPUS = ROOT / "fuzz" / "corpus"

REQUESTS = {  # http_heads.json names: the valid paths and one smuggling vector per kind
    "simple GET", "HTTP/1.0 without Host closes", "pipelined GETs", "Content-Length body then pipelined GET",
    "chunked with extension and trailers, then pipelined GET", "chunked body containing CRLFCRLF",
    "websocket upgrade with leftover", "Upgrade header without Connection: upgrade is a plain request",
    "CL.TE", "TE.CL", "duplicate Content-Length, different", "obs-fold", "space before colon (Transfer-Encoding)",
    "bare LF line endings", "NUL in header value", "Transfer-Encoding xchunked",
}
RESPONSE_COUNT = 8  # the first ones of http_heads.json "responses"


def write(harness: str, data: bytes) -> None:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def http_seeds() -> None:
    vectors = json.loads((VECTORS / "http_heads.json").read_text())
    for vector in vectors["requests"]:
        if vector["name"] in REQUESTS:
            wire = vector["data"].encode("latin-1")
            write("http_head", b"\x00\x00" + wire)  # fed whole
            write("http_head", b"\x08\x07" + wire)  # trusted client, random cuts
    for vector in vectors["responses"][:RESPONSE_COUNT]:
        flags = 0x01 | (0x10 if vector.get("eof") else 0) | (0x20 if vector.get("head_request") else 0)
        write("http_head", bytes([flags, 0]) + vector["data"].encode("latin-1"))
    client = json.loads((VECTORS / "handshake.json").read_text())["client"][0]
    lines = [f"{client['method']} /ws HTTP/{client['version']}"] + [f"{n}: {v}" for n, v in client["headers"]]
    write("http_head", b"\x44\x01" + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def stream(vector: dict) -> bytes:
    parts = []
    for piece in vector["stream"]:
        hex_text, _, count = piece.partition("*")
        parts.append(bytes.fromhex(hex_text) * (int(count) if count else 1))
    return b"".join(parts)


def frame_seeds() -> None:
    for name, take in (("frames_valid.json", 10), ("frames_invalid.json", 8)):
        vectors = json.loads((VECTORS / name).read_text())["vectors"]
        for vector in vectors[:take]:
            rsv = {0: 0, 0x40: 1, 0x70: 2}.get(vector.get("rsv_allowed", 0), 0)
            flags = (1 if vector["masked"] else 0) | rsv << 1 | 0x10
            data = stream(vector)
            if len(data) <= 4096:
                write("frames", bytes([flags, 0, 0, 7]) + data)


if __name__ == "__main__":
    http_seeds()
    frame_seeds()
    for harness in ("http_head", "frames"):
        print(harness, len(list((CORPUS / harness).iterdir())), "seeds")
