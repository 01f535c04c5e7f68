"""The meeting protocol: small, versioned, length-prefixed messages over TCP (optionally TLS).

Every message is an 8-byte header and a payload::

    b"EK" | version (1 byte) | type (1 byte) | payload length (4 bytes, big-endian)

Payloads: HELLO / WELCOME / STATUS / ERROR are UTF-8 JSON objects; TILE is a 2-byte JSON length, the JSON
(label, score, seq, sent) and then the participant's JPEG tile (empty in privacy mode); GRID is a JPEG;
PING / PONG / BYE are empty. A reader refuses anything else before reading the payload: a wrong magic or
version, an unknown type, a length over the limit, a JSON that is not an object. Both sides use the same
functions; the server reads with asyncio, the client with a plain socket.
"""
from __future__ import annotations

import json
import struct

MAGIC = b"EK"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HELLO, WELCOME, TILE, STATUS, GRID, PING, PONG, BYE, ERROR = range(1, 10)
NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", TILE: "TILE", STATUS: "STATUS", GRID: "GRID", PING: "PING",
         PONG: "PONG", BYE: "BYE", ERROR: "ERROR"}
JSON_TYPES = {HELLO, WELCOME, STATUS, ERROR}
MAX_JSON = 4096
MAX_MESSAGE = 2 * 1024 * 1024  # default limit on one payload (a tile or a grid JPEG)


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed with this reason."""


def encode(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, len(payload)) + payload


def encode_json(kind: int, obj: dict) -> bytes:
    return encode(kind, json.dumps(obj, separators=(",", ":")).encode())


def encode_tile(meta: dict, jpeg: bytes = b"") -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    return encode(TILE, struct.pack(">H", len(head)) + head + jpeg)


def parse_header(header: bytes, max_size: int) -> tuple[int, int]:
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (not an edgekit client?)")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}")
    if kind not in NAMES:
        raise ProtocolError(f"unknown message type {kind}")
    limit = MAX_JSON if kind in JSON_TYPES else max_size
    if length > limit:
        raise ProtocolError(f"{NAMES[kind]} of {length} bytes exceeds the limit of {limit}")
    return kind, length


def decode_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("payload is not a JSON object")
    return obj


def decode_tile(payload: bytes) -> tuple[dict, bytes]:
    if len(payload) < 2:
        raise ProtocolError("truncated TILE")
    (size,) = struct.unpack(">H", payload[:2])
    if size > MAX_JSON or 2 + size > len(payload):
        raise ProtocolError("TILE header length out of range")
    return decode_json(payload[2:2 + size]), payload[2 + size:]


async def read_message(reader, max_size: int = MAX_MESSAGE) -> tuple[int, bytes]:
    """One message from an asyncio StreamReader (IncompleteReadError at a clean or broken end)."""
    kind, length = parse_header(await reader.readexactly(HEADER.size), max_size)
    return kind, await reader.readexactly(length) if length else b""


def recv_exactly(sock, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_message(sock, max_size: int = MAX_MESSAGE) -> tuple[int, bytes]:
    """One message from a blocking socket."""
    kind, length = parse_header(recv_exactly(sock, HEADER.size), max_size)
    return kind, recv_exactly(sock, length) if length else b""


MAX_TILE_PIXELS = 1920 * 1080  # a tile's JPEG may not decode to more than this (a tiny file can claim 65535^2)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding it; None if there is no valid header."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: precision, height, width
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def sanitize_name(name: object, limit: int = 32) -> str:
    """Printable letters, digits and ' ._-' only, at most ``limit`` characters; never empty."""
    text = "".join(c for c in str(name) if c.isalnum() or c in " ._-").strip()[:limit]
    return text or "guest"
