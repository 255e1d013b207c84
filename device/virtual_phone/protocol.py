"""The ADB wire protocol as a device speaks it: packet framing, checksums and RSA auth checks.

A packet is a 24-byte little-endian header ``command, arg0, arg1, data_length, data_crc32, magic``
(``magic = command ^ 0xFFFFFFFF``; the "crc32" is the byte sum) followed by ``data_length`` bytes.
Clients with protocol version ``>= 0x01000001`` may send a zero checksum; older ones must send it.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

import numpy as np

HEADER = struct.Struct("<6I")
HEADER_SIZE = HEADER.size

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD_BYTES = 256 * 1024
SYNC_DATA_MAX_BYTES = 64 * 1024

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE_BYTES = 20


def _wire(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE, SYNC, STLS = (
    _wire(n) for n in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"SYNC", b"STLS")
)
NAMES = {v: k for k, v in {
    "CNXN": CNXN, "AUTH": AUTH, "OPEN": OPEN, "OKAY": OKAY, "CLSE": CLSE, "WRTE": WRTE, "SYNC": SYNC, "STLS": STLS,
}.items()}

# file sync ids
S_STAT, S_LIST, S_SEND, S_RECV, S_DENT, S_DONE, S_DATA, S_OKAY, S_FAIL, S_QUIT = (
    _wire(n) for n in (b"STAT", b"LIST", b"SEND", b"RECV", b"DENT", b"DONE", b"DATA", b"OKAY", b"FAIL", b"QUIT")
)

# shell protocol v2 packet ids
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = 0, 1, 2, 3, 4, 5
SHELL_V2_HEADER = struct.Struct("<BI")


class ProtocolError(Exception):
    """The peer sent something that is not ADB."""


def checksum(data: bytes | bytearray | memoryview) -> int:
    """ADB's payload "crc32": the sum of the bytes modulo 2**32 (vectorised)."""
    if not data:
        return 0
    return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF


def pack(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """One packet (header + payload) ready to send."""
    return HEADER.pack(command, arg0 & 0xFFFFFFFF, arg1 & 0xFFFFFFFF, len(data), checksum(data),
                       command ^ 0xFFFFFFFF) + bytes(data)


@dataclass(frozen=True)
class Header:
    """A parsed packet header."""

    command: int
    arg0: int
    arg1: int
    length: int
    crc: int

    @property
    def name(self) -> str:
        return NAMES.get(self.command, f"0x{self.command:08x}")


def unpack_header(raw: bytes) -> Header:
    """Parse and check a 24-byte header."""
    command, arg0, arg1, length, crc, magic = HEADER.unpack(raw)
    if command not in NAMES or magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad packet header (command 0x{command:08x}, magic 0x{magic:08x})")
    return Header(command, arg0, arg1, length, crc)


def sync_header(sync_id: int, value: int, data: bytes = b"") -> bytes:
    """A file-sync message: id, a 32-bit value (usually a length), then data."""
    return struct.pack("<2I", sync_id, value & 0xFFFFFFFF) + data


# --- RSA keys as adbd stores them (Android's RSAPublicKey struct, base64) --------------------------------

_MODULUS_BYTES = 256
_ANDROID_KEY = struct.Struct(f"<II{_MODULUS_BYTES}s{_MODULUS_BYTES}sI")


def decode_android_pubkey(text: bytes | str) -> tuple[int, int]:
    """``(n, e)`` from an ``adbkey.pub`` line (base64 of Android's RSAPublicKey, then `` user@host``)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    b64 = text.strip().strip("\x00").split()[0] if text.strip().strip("\x00") else ""
    try:
        raw = base64.b64decode(b64, validate=True)
        words, _n0inv, modulus, _rr, exponent = _ANDROID_KEY.unpack(raw)
    except (ValueError, struct.error) as exc:
        raise ProtocolError(f"not an Android RSA public key: {exc}") from None
    if words != _MODULUS_BYTES // 4:
        raise ProtocolError("not a 2048-bit Android RSA public key")
    return int.from_bytes(modulus, "little"), exponent


# DER DigestInfo prefix for SHA-1; adbd checks RSA_verify(NID_sha1, token, ...) on the raw 20-byte token.
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


def verify_token_signature(pubkey: tuple[int, int], token: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a PKCS#1 v1.5 SHA-1 signature of the (pre-hashed) ``token``."""
    n, e = pubkey
    if len(signature) != _MODULUS_BYTES:
        return False
    m = pow(int.from_bytes(signature, "big"), e, n).to_bytes(_MODULUS_BYTES, "big")
    payload = _SHA1_DIGEST_INFO + token
    expected = b"\x00\x01" + b"\xff" * (_MODULUS_BYTES - len(payload) - 3) + b"\x00" + payload
    return m == expected
