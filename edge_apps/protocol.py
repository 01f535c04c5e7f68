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


MAX_DEPTH = 3  # {"a": {"b": [1]}}: every message of this protocol is flat; deeper nesting is refused


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, outside strings, without parsing it (json.loads of 4,000 '['
    is a RecursionError)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def decode_json(payload: bytes) -> dict:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8: {exc.reason}") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("payload is not a JSON object")
    return obj


def field(obj: dict, name: str, kind: type, default=None):
    """``obj[name]`` if it has exactly type ``kind`` (a bool is not a number here), else a ProtocolError;
    ``default`` when absent."""
    if name not in obj:
        return default
    value = obj[name]
    if type(value) is bool and kind is not bool or not isinstance(value, kind):
        raise ProtocolError(f"{name!r} must be {kind.__name__ if isinstance(kind, type) else 'a number'}")
    return value


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


MAX_JPEG_SCANS = 16  # baseline JPEGs have 1-4 scans, encoders' progressive ones about 10


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in a JPEG. Entropy-coded data stuffs every 0xFF byte with 0x00, so 0xFFDA only
    ever appears as a marker."""
    return data.count(b"\xff\xda")


def sanitize_name(name: object, limit: int = 32, empty: str = "guest") -> str:
    """Printable letters, digits and ' ._-' only, at most ``limit`` characters; never empty. Used for names and
    labels alike, wherever they are shown or returned (grid, dashboard, status.json, logs)."""
    text = "".join(c for c in str(name) if (c.isalnum() and c.isprintable()) or c in " ._-").strip()[:limit]
    return text or empty
