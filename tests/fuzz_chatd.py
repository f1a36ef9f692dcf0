"""A bounded network fuzzer for chatd: ``python -m tests.fuzz_chatd --cases 50000 --seed 7``.

It starts ``python -m chatd`` on a free 127.0.0.1 port, connects a *control client* that
chats normally, then sends seeded random cases, each on a fresh TCP connection: random
bytes, plain HTTP requests, mutated upgrade requests, and after a real handshake random
WebSocket frames and chat JSON, valid, mutated or junk. The unit tests feed the parsers
directly; this drives the whole server (runtime, handshake, hub, storage) as an attacker
would, and asks the questions only a running process can answer: does it stay up, stay
responsive, keep chatting for others, and stay within memory?

After every case: the process is alive, its log has no ``Traceback``, and whatever it
answered is well formed (an HTTP status from ``HTTP_STATUSES``, never 500; valid server
frames carrying JSON objects; documented error and close codes). Every ``check_every``
cases and at the end: ``GET /health`` answers 200, the control client's message comes
back as broadcast and ``ack``, and VmRSS stays under its start plus ``rss_growth``, each
within 2 s.

Everything is bounded: a case gets at most ``CASE_TIMEOUT`` seconds and ``MAX_READ``
bytes of answer; the server is stopped by PID (SIGTERM, then SIGKILL after 10 s).

Every case is a pure function of ``(seed, index)``, so a failure prints the command that
replays it (``--replay SEED:INDEX`` or ``SEED:FIRST-LAST``, checking after every case).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rfc6455.client import Client, ConnectionClosed
from rfc6455.codes import is_sendable_close_code
from rfc6455.errors import InvalidHandshake, RemoteProtocolError
from rfc6455.frames import FrameParser
from rfc6455.http import parse_response_head

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Seconds one case may take, from connect to the server's close.
CASE_TIMEOUT = 2.0
#: In the "quiet" ending, a case stops once the server has been silent this long.
QUIET = 0.03
#: The most bytes of answer read per case; then the socket is closed on the server.
MAX_READ = 256 * 1024
#: Seconds allowed for each health check, control round trip, startup and shutdown.
CHECK_TIMEOUT = 2.0
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: How far VmRSS may grow above its value after startup.
DEFAULT_RSS_GROWTH = 64 * 1024 * 1024
#: How many bytes of a failing case are shown (as hex).
SHOW_BYTES = 512


def documented_error_codes(
    protocol_doc: Path = REPO_ROOT / "docs" / "protocol.md",
) -> frozenset[str]:
    """The codes in the "Error codes" table of docs/protocol.md: the only ones to send."""
    text = protocol_doc.read_text(encoding="utf-8")
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    codes = frozenset(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))
    if not codes:
        raise ValueError(f"no error codes found in {protocol_doc}")
    return codes


ERROR_CODES = documented_error_codes()
#: HTTP statuses a healthy server may answer with (500 means a bug).
#: 403 and 503 are chatd's policy refusals (Origin, connection limits).
HTTP_STATUSES = frozenset(
    {101, 200, 400, 401, 403, 404, 405, 411, 413, 414, 426, 429, 431, 503, 505}
)

#: What a case sends: random bytes; a plain HTTP request; a mutated upgrade request; a
#: good handshake then broken frames; a good handshake then chat JSON in valid frames.
KINDS = ("bytes", "http", "upgrade", "frames", "chat")
#: How a case ends: half-close and read to EOF; send a close frame and read to EOF; read
#: until the server is quiet; reset the connection at once without reading.
ENDINGS = ("eof", "close", "quiet", "abort")


# --- cases ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One connection's worth of input: a head, maybe frames, and how to end.

    ``frames`` are sent only after the server answered ``request`` with 101, unless
    ``pipelined``, when everything goes in one write.
    """

    seed: int
    index: int
    kind: str
    notes: tuple[str, ...]
    request: bytes
    frames: tuple[bytes, ...] = ()
    pipelined: bool = False
    ending: str = "eof"

    @property
    def data(self) -> bytes:
        """Every byte the case may send, in order (what a report shows)."""
        return self.request + b"".join(self.frames)

    def describe(self) -> str:
        shown = self.data[:SHOW_BYTES].hex()
        more = f" (+{len(self.data) - SHOW_BYTES} bytes)" if len(self.data) > SHOW_BYTES else ""
        return (
            f"case {self.seed}:{self.index} kind={self.kind} ending={self.ending} "
            f"pipelined={self.pipelined} frames={len(self.frames)} "
            f"notes={', '.join(self.notes) or '-'}\n"
            f"  {len(self.data)} bytes: {shown}{more}"
        )


class Generator:
    """Draws one case from a ``random.Random``, noting what it broke (for the report)."""

    def __init__(self, rng: random.Random, port: int) -> None:
        self.rng = rng
        self.port = port
        self.notes: list[str] = []

    # Small helpers ------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.notes.append(text)

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def size(self, *sizes: int) -> int:
        """A length skewed towards the boundaries given, sometimes anything up to the last."""
        if self.chance(0.2):
            return self.rng.randrange(sizes[-1] + 1)
        return self.rng.choice(sizes)

    def unicode_text(self, length: int) -> str:
        """Text from pools that stress encoders: controls, astral, RTL, lone surrogates."""
        pools = [
            (0x20, 0x7E),
            (0x00, 0x1F),
            (0x80, 0x2FF),
            (0x590, 0x6FF),
            (0x300, 0x36F),
            (0x4E00, 0x4FFF),
            (0xD800, 0xDFFF),
            (0xE000, 0xF8FF),
            (0xFFF0, 0xFFFF),
            (0x1F300, 0x1FAFF),
            (0x10000, 0x10FFFF),
        ]
        chars = []
        for _ in range(length):
            low, high = self.rng.choice(pools)
            chars.append(chr(self.rng.randint(low, high)))
        return "".join(chars)

    def key(self) -> str:
        return base64.b64encode(self.rng.randbytes(16)).decode()

    # Byte mutations -----------------------------------------------------------------------

    def mutate_bytes(self, data: bytes, count: int) -> bytes:
        """Delete, insert, flip, duplicate or truncate, ``count`` times."""
        interesting = [b"\x00", b"\r", b"\n", b"\r\n", b"\xff", b" ", b":", b"\t", b"\r\n\r\n"]
        buffer = bytearray(data)
        for _ in range(count):
            operation = self.rng.choice(["delete", "insert", "flip", "duplicate", "truncate"])
            position = self.rng.randrange(len(buffer) + 1)
            if operation == "delete" and buffer:
                del buffer[position : position + self.rng.randint(1, 16)]
            elif operation == "insert":
                chunk = (
                    self.rng.choice(interesting)
                    if self.chance(0.6)
                    else self.rng.randbytes(self.rng.randint(1, 8))
                )
                buffer[position:position] = chunk
            elif operation == "flip" and position < len(buffer):
                buffer[position] ^= 1 << self.rng.randrange(8)
            elif operation == "duplicate" and buffer:
                end = min(len(buffer), position + self.rng.randint(1, 64))
                buffer[position:position] = buffer[position:end]
            elif operation == "truncate":
                del buffer[position:]
            self.note(f"bytes:{operation}@{position}")
        return bytes(buffer)

    # HTTP heads ---------------------------------------------------------------------------

    def ws_target(self) -> str:
        names = ["fuzz", "fuzz", "control", "a" * 50, "a" * 51, "bad%20name", "%00", "%ff", ""]
        parts = [f"name={self.rng.choice(names)}"]
        if self.chance(0.2):
            parts.append("room=" + self.rng.choice(["dev", "r" * 64, "r" * 65, "a%20b", "lobby"]))
        if self.chance(0.1):
            parts.append("session=" + self.rng.choice(["x", "A" * 16, "%00", "s" * 1000]))
        if self.chance(0.05):
            parts.append("token=" + self.rng.choice(["t", "%" * 10]))
        return "/ws?" + "&".join(parts)

    def upgrade_lines(self, target: str | None = None) -> list[str]:
        lines = [
            f"GET {target or self.ws_target()} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.chance(0.2):
            lines.append(
                "Origin: "
                + self.rng.choice([f"http://127.0.0.1:{self.port}", "http://evil.example", "null"])
            )
        if self.chance(0.2):
            self.note("extensions")
            lines.append(
                "Sec-WebSocket-Extensions: "
                + self.rng.choice(
                    [
                        "permessage-deflate",
                        "permessage-deflate; client_max_window_bits",
                        "permessage-deflate; server_max_window_bits=7",
                        "permessage-deflate; bogus",
                        'x-foo; a="b',
                        ",,,",
                    ]
                )
            )
        if self.chance(0.1):
            protocols = self.rng.choice(["chat", "a, b", "@", "", "chat, chat", "(x)"])
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
            self.note(f"subprotocols:{protocols}")
        return lines

    def mutate_lines(self, lines: list[str], count: int) -> list[str]:
        """Header-level mutations of a request head (line 0 is the request line)."""
        lines = list(lines)
        for _ in range(count):
            operation = self.rng.choice(
                [
                    "delete",
                    "duplicate",
                    "version",
                    "key",
                    "method",
                    "http-version",
                    "huge-header",
                    "many-headers",
                    "target",
                    "connection",
                    "upgrade",
                    "odd-header",
                    "non-ascii",
                ]
            )
            self.note(f"head:{operation}")
            if operation == "delete" and len(lines) > 1:
                del lines[self.rng.randrange(1, len(lines))]
            elif operation == "duplicate":
                line = lines[self.rng.randrange(len(lines))]
                lines.insert(self.rng.randrange(1, len(lines) + 1), line)
            elif operation == "version":
                lines = [line for line in lines if not line.startswith("Sec-WebSocket-Version")]
                version = self.rng.choice(["", "12", "8", "13, 13", "14", "abc", "1" * 100, " 13"])
                lines.append(f"Sec-WebSocket-Version: {version}")
            elif operation == "key":
                lines = [line for line in lines if not line.startswith("Sec-WebSocket-Key")]
                key = self.rng.choice(
                    [
                        "",
                        "short",
                        "!" * 24,
                        self.key() + "=",
                        base64.b64encode(self.rng.randbytes(15)).decode(),
                        base64.b64encode(self.rng.randbytes(17)).decode(),
                        "\xe9" * 24,
                        self.key().replace("=", "A"),
                    ]
                )
                lines.append(f"Sec-WebSocket-Key: {key}")
            elif operation == "method":
                method = self.rng.choice(
                    ["POST", "HEAD", "PUT", "CONNECT", "get", "G\x00T", "", "X" * 200, "GET GET"]
                )
                lines[0] = method + lines[0][lines[0].index(" ") :]
            elif operation == "http-version":
                version = self.rng.choice(
                    ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.1x", "HTTP/9.9", ""]
                )
                lines[0] = lines[0].rsplit(" ", 1)[0] + " " + version
            elif operation == "huge-header":
                size = self.rng.choice([8000, 8190, 8191, 9000, 20000])
                lines.append("X-Huge: " + "h" * size)
            elif operation == "many-headers":
                lines += [f"X-{i}: {i}" for i in range(self.rng.choice([60, 63, 64, 65, 200]))]
            elif operation == "target":
                target = self.rng.choice(
                    [
                        "/chat",
                        "/ws/",
                        "*",
                        "http://127.0.0.1/ws?name=abs",
                        "/ws?" + "a" * 9000,
                        "/ws?name=%",
                        "/ws?room=",
                        "/ws?name=x&name=y",
                        "/ws#frag",
                        "/%2e%2e/ws",
                    ]
                )
                method, _, rest = lines[0].partition(" ")
                lines[0] = f"{method} {target} {rest.rpartition(' ')[2]}"
            elif operation == "connection":
                lines = [line for line in lines if not line.lower().startswith("connection")]
                value = self.rng.choice(["keep-alive, Upgrade", "upgrade", "close", "", "Upgrade,"])
                lines.append(f"Connection: {value}")
            elif operation == "upgrade":
                lines = [line for line in lines if not line.lower().startswith("upgrade")]
                value = self.rng.choice(["WebSocket", "websocket, h2c", "h2c", "", "websocket/13"])
                lines.append(f"Upgrade: {value}")
            elif operation == "odd-header":
                lines.append(
                    self.rng.choice(
                        [
                            "Host : x",
                            " folded",
                            "\tfolded",
                            "NoColon",
                            ": empty-name",
                            "Bad\x00Name: v",
                            "X: bare\rcr",
                            "X: bare\nlf",
                            "Content-Length: 5",
                            "Transfer-Encoding: chunked",
                        ]
                    )
                )
            elif operation == "non-ascii":
                position = self.rng.randrange(len(lines))
                lines[position] += self.unicode_text(self.rng.randint(1, 8))
        return lines

    @staticmethod
    def encode_head(lines: list[str]) -> bytes:
        text = "\r\n".join(lines) + "\r\n\r\n"
        return text.encode("utf-8", "surrogatepass")

    # WebSocket frames ---------------------------------------------------------------------

    def frame(
        self,
        opcode: int,
        payload: bytes,
        *,
        fin: bool = True,
        rsv: int = 0,
        masked: bool = True,
        declared: int | None = None,
        length_form: str = "minimal",
    ) -> bytes:
        """Any frame, including broken ones: a declared length may lie, masks may lack."""
        length = len(payload) if declared is None else declared
        first = (0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)
        mask_bit = 0x80 if masked else 0
        if length_form == "minimal":
            length_form = "7" if length < 126 else "16" if length < 0x10000 else "64"
        if length_form == "7":
            header = bytes((first, mask_bit | (length & 0x7F)))
        elif length_form == "16":
            header = bytes((first, mask_bit | 126)) + struct.pack("!H", length & 0xFFFF)
        else:
            header = bytes((first, mask_bit | 127)) + struct.pack("!Q", length & (2**64 - 1))
        if not masked:
            return header + payload
        key = self.rng.randbytes(4)
        return header + key + _xor(payload, key)

    def text_frames(self, text: str) -> list[bytes]:
        """A valid masked text message, sometimes in valid fragments."""
        data = text.encode("utf-8", "surrogatepass")
        if len(data) < 2 or self.chance(0.8):
            return [self.frame(0x1, data)]
        cut = self.rng.randrange(1, len(data))
        return [self.frame(0x1, data[:cut], fin=False), self.frame(0x0, data[cut:])]

    def random_frame(self) -> bytes:
        """One frame that may break any rule of section 5."""
        rng = self.rng
        opcode = rng.choice([0, 1, 1, 1, 2, 2, 8, 8, 9, 9, 10, 3, 7, 11, 15])
        self.note(f"frame:op{opcode}")
        if opcode == 8:
            payload = self.close_payload()
        elif opcode in (9, 10):
            payload = rng.randbytes(rng.choice([0, 1, 125, 125, 126, 200]))
        elif opcode == 1 and self.chance(0.5):
            payload = self.bad_utf8()
        else:
            payload = rng.randbytes(self.size(0, 1, 125, 126, 127, 65535, 65536, 70000))
        fin = self.chance(0.85)
        rsv = rng.randrange(8) if self.chance(0.1) else 0
        masked = self.chance(0.9)
        declared: int | None = None
        length_form = "minimal"
        if self.chance(0.1):
            declared = rng.choice([2**16 - 1, 2**20 + 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1])
            self.note(f"frame:declared={declared}")
        elif self.chance(0.05):
            length_form = rng.choice(["16", "64"])  # not minimal, or truncated to fit
        frame = self.frame(
            opcode,
            payload,
            fin=fin,
            rsv=rsv,
            masked=masked,
            declared=declared,
            length_form=length_form,
        )
        if self.chance(0.05):
            frame = frame[: rng.randrange(len(frame))]
            self.note("frame:truncated")
        return frame

    def close_payload(self) -> bytes:
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:
            return b""
        if choice == 1:
            return rng.randbytes(1)
        code = rng.choice([0, 999, 1000, 1001, 1004, 1005, 1006, 1012, 1015, 2999, 3000, 4999])
        code = rng.choice([code, rng.randrange(65536)])
        reason = rng.choice([b"", b"bye", self.bad_utf8()[:20], b"r" * 123, b"r" * 124])
        return struct.pack("!H", code) + reason

    def bad_utf8(self) -> bytes:
        good = self.unicode_text(self.rng.randint(0, 20)).encode("utf-8", "surrogatepass")
        bad = self.rng.choice(
            [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
        )
        position = self.rng.randrange(len(good) + 1)
        return good[:position] + bad + good[position:]

    def frame_sequence(self) -> list[bytes]:
        """Frames after a good handshake: single broken ones and broken sequences."""
        rng = self.rng
        frames: list[bytes] = []
        for _ in range(rng.randint(1, 6)):
            pattern = rng.randrange(10)
            if pattern < 5:
                frames.append(self.random_frame())
            elif pattern == 5:
                self.note("seq:fragmented-control")
                frames.append(self.frame(rng.choice([8, 9, 10]), b"ctl", fin=False))
            elif pattern == 6:
                self.note("seq:continuation-first")
                frames.append(self.frame(0x0, b"orphan"))
            elif pattern == 7:
                self.note("seq:interleaved")
                frames += [
                    self.frame(0x1, b'{"type":', fin=False),
                    self.frame(0x9, b"ping in between"),
                    self.frame(rng.choice([0x1, 0x2]), b"new message while fragmented"),
                ]
            elif pattern == 8:
                self.note("seq:split-utf8")
                data = "é€😀".encode()
                cut = rng.randrange(1, len(data))
                frames += [self.frame(0x1, data[:cut], fin=False), self.frame(0x0, data[cut:])]
            elif self.chance(0.1):
                self.note("seq:over-1MiB")
                chunk = b"x" * 65536
                frames += [self.frame(0x1, b"[", fin=False)]
                frames += [self.frame(0x0, chunk, fin=False) for _ in range(16)]
                frames += [self.frame(0x0, b"]")]
            else:
                frames.append(self.frame(0x2, rng.randbytes(rng.randint(0, 300))))
        return frames

    # Chat messages ------------------------------------------------------------------------

    def room(self) -> str:
        return self.rng.choice(["lobby", "lobby", "dev", "fuzz", "r" * 64, "a.b-c_d"])

    def message_id(self) -> str:
        return self.rng.choice(["m1", f"id-{self.rng.randrange(10**6)}", "x" * 64])

    def valid_message(self) -> dict[str, Any]:
        """A message of any type that parse_client_message accepts."""
        rng = self.rng
        kind = rng.choice(
            ["join", "leave", "message", "dm", "typing", "history", "resume", "receipt", "ping"]
        )
        message: dict[str, Any] = {"type": kind}
        if rng.random() < 0.7:
            message["id"] = self.message_id()
        if kind in ("join", "leave", "message", "typing", "history", "receipt"):
            message["room"] = self.room()
        if kind in ("message", "dm"):
            message["text"] = self.chat_text()
        if kind == "dm":
            message["to"] = rng.choice(["control", "fuzz", "nobody", "n" * 50])
        elif kind == "typing" and self.chance(0.7):
            message["active"] = self.chance(0.5)
        elif kind == "history":
            if self.chance(0.5):
                message["before"] = rng.choice([0, 1, 10, 2**53 - 1])
            if self.chance(0.5):
                message["limit"] = rng.choice([1, 50, 200])
        elif kind == "resume":
            if self.chance(0.8):
                message["rooms"] = {
                    self.room(): rng.choice([0, 1, 2**53 - 1]) for _ in range(rng.randint(0, 5))
                }
            if "rooms" not in message or self.chance(0.3):
                message["dm"] = rng.choice([0, 5, 2**53 - 1])
        elif kind == "receipt":
            message["seq"] = rng.choice([0, 1, 2, 2**53 - 1])
            message["status"] = rng.choice(["delivered", "seen"])
        return message

    def chat_text(self) -> str:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:
            return rng.choice(
                [
                    "/msg control hi",
                    "/msg",
                    "/join dev",
                    "/join bad room",
                    "/leave",
                    "/nick fuzzy",
                    "/nick control",
                    "/nick " + "n" * 51,
                    "/me waves",
                    "/me",
                    "/shrug",
                    "/shrug ok",
                    "/who",
                    "/help",
                    "/HELP",
                    "/nope",
                    "/",
                    "//etc",
                    "/msg nobody hi",
                ]
            )
        if choice == 1:
            return "x" * rng.choice([3999, 4000])
        if choice == 2:
            return self.unicode_text(rng.choice([1, 10, 1000, 4000]))
        return "hello " + str(rng.randrange(1000))

    def arbitrary_value(self, depth: int = 0) -> Any:
        """A random JSON value: wrong types for any field."""
        rng = self.rng
        choice = rng.randrange(12 if depth < 3 else 9)
        simple: list[Any] = [
            None,
            True,
            False,
            0,
            -1,
            2**53,
            2**64,
            1.5,
            2.0,
            float("inf"),
            float("nan"),
            "",
            " ",
            "x" * rng.choice([65, 4001, 100_000]),
            self.unicode_text(rng.randint(1, 30)),
        ]
        if choice < 9:
            return rng.choice(simple)
        if choice == 9:
            return [self.arbitrary_value(depth + 1) for _ in range(rng.randint(0, 4))]
        if choice == 10:
            return {self.unicode_text(3): self.arbitrary_value(depth + 1) for _ in range(3)}
        return json.loads("[" * 50 + "]" * 50)

    def mutated_message(self) -> dict[str, Any]:
        message = self.valid_message()
        for _ in range(self.rng.randint(1, 3)):
            operation = self.rng.choice(["delete", "retype", "add", "type", "huge"])
            key = self.rng.choice([*message.keys(), "room", "text", "id", "to", "seq"])
            self.note(f"json:{operation}:{key}")
            if operation == "delete":
                message.pop(key, None)
            elif operation == "retype":
                message[key] = self.arbitrary_value()
            elif operation == "add":
                message[self.unicode_text(5)] = self.arbitrary_value()
            elif operation == "type":
                message["type"] = self.rng.choice(["", "JOIN", "shout", "message ", 1, None, []])
            else:
                message[key] = self.rng.choice(["r", "é", "😀"]) * self.rng.choice(
                    [64, 65, 4001, 20_000]
                )
        return message

    def chat_payload(self) -> str:
        """The text of one frame: a message valid, mutated, or not JSON at all."""
        rng = self.rng
        choice = rng.randrange(10)
        if choice < 4:
            value: Any = self.valid_message()
        elif choice < 8:
            value = self.mutated_message()
        else:
            self.note("json:junk")
            return rng.choice(
                [
                    "",
                    "{",
                    "[1, 2]",
                    "null",
                    '"text"',
                    "[" * 8000 + "]" * 8000,
                    "[" * 100_000 + "]" * 100_000,
                    '{"a":' * 2500 + "1" + "}" * 2500,
                    "1" * 5000,
                    '{"type": NaN}',
                    '{"type": "ping", "type": "join"}',
                    "\ufeff" + '{"type": "ping"}',
                    '{"type": "ping"} trailing',
                    self.unicode_text(rng.randint(1, 200)),
                    json.dumps(self.valid_message())[: rng.randint(0, 40)],
                ]
            )
        return json.dumps(value, ensure_ascii=self.chance(0.5), allow_nan=True)

    # Cases --------------------------------------------------------------------------------

    def case(self, seed: int, index: int) -> Case:
        rng = self.rng
        kind = rng.choices(KINDS, weights=[10, 15, 25, 25, 25])[0]
        ending = rng.choices(ENDINGS, weights=[50, 25, 15, 10])[0]
        frames: list[bytes] = []
        pipelined = False
        if kind == "bytes":
            request = self.garbage()
        elif kind == "http":
            request = self.http_request()
        elif kind == "upgrade":
            lines = self.mutate_lines(self.upgrade_lines(), rng.randint(1, 3))
            request = self.encode_head(lines)
            if self.chance(0.3):
                request = self.mutate_bytes(request, rng.randint(1, 3))
            if self.chance(0.1):
                request += rng.randbytes(rng.randint(1, 200))
                self.note("garbage-after-head")
        else:
            request = self.encode_head(self.upgrade_lines(self.ws_target_valid()))
            pipelined = self.chance(0.3)
            if kind == "frames":
                frames = self.frame_sequence()
            else:
                for _ in range(rng.randint(1, 8)):
                    if self.chance(0.05):
                        self.note("chat:binary")
                        frames.append(
                            self.frame(0x2, self.chat_payload().encode("utf-8", "surrogatepass"))
                        )
                    else:
                        frames += self.text_frames(self.chat_payload())
        if ending == "close":
            if kind in ("frames", "chat"):
                frames.append(self.frame(0x8, struct.pack("!H", 1000)))
            else:
                ending = "eof"  # a close frame means nothing before a handshake
        return Case(seed, index, kind, tuple(self.notes), request, tuple(frames), pipelined, ending)

    def ws_target_valid(self) -> str:
        name = self.rng.choice(["fuzz", "fuzz", "f" * 50, "a.b-c_d"])
        room = self.rng.choice(["", "&room=dev", "&room=fuzz"])
        return f"/ws?name={name}{room}"

    def garbage(self) -> bytes:
        rng = self.rng
        prefix = rng.choice([b"", b"", b"GET ", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\r\n"])
        return prefix + rng.randbytes(self.size(0, 1, 4, 64, 1024, 8192, 9000))

    def http_request(self) -> bytes:
        """A plain HTTP request for the API, the UI or nothing, often broken."""
        rng = self.rng
        method = rng.choice(["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
        path = rng.choice(
            [
                "/",
                "/index.html",
                "/health",
                "/ws",
                "/api/status",
                "/api/rooms",
                "/api/rooms/lobby/messages",
                "/api/rooms/dev/messages",
                "/api/rooms/nope/messages",
                "/api/rooms/bad%20room/messages",
                "/api/rooms/%ff/messages",
                "/static/app.js",
                "/static/style.css",
                "/static/../../etc/passwd",
                "/static/%2e%2e/%2e%2e/etc/passwd",
                "/static/%00",
                "/static/",
                "/nope",
                "*",
                "http://127.0.0.1/health",
                "//health",
            ]
        )
        query = rng.choice(
            [
                "",
                "",
                "?limit=0",
                "?limit=201",
                "?limit=200",
                "?before=9007199254740992",
                "?before=-1",
                "?limit=%ff",
                "?before=1e3",
                "?limit=" + "9" * 30,
                "?limit=%D9%A3",
                "?x=%",
                "?before=&limit=",
            ]
        )
        lines = [f"{method} {path}{query} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        body = b""
        if self.chance(0.5):
            lines.append("Connection: " + rng.choice(["close", "keep-alive", "Upgrade"]))
        if self.chance(0.2):
            body = rng.randbytes(rng.choice([0, 5, 100]))
            length = rng.choice([len(body), len(body) + 10, 2**20 + 1, -1, 10**30])
            lines.append(f"Content-Length: {length}")
            if self.chance(0.2):
                lines.append("Content-Length: 7")
        if self.chance(0.1):
            lines.append("Transfer-Encoding: " + rng.choice(["chunked", "gzip", "gzip, chunked"]))
        if self.chance(0.4):
            lines = self.mutate_lines(lines, rng.randint(1, 2))
        request = self.encode_head(lines) + body
        if self.chance(0.2):
            self.note("pipelined-requests")
            request += self.encode_head(["GET /health HTTP/1.1", "Host: x"]) * rng.randint(1, 3)
        if self.chance(0.2):
            request = self.mutate_bytes(request, rng.randint(1, 3))
        return request


def _xor(data: bytes, key: bytes) -> bytes:
    """Mask ``data`` with ``key`` (section 5.3); written here so broken frames can be too."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


def generate_case(seed: int, index: int, port: int) -> Case:
    """The case ``index`` of ``seed``: the same bytes every time, on every machine."""
    rng = random.Random(f"chatd-fuzz:{seed}:{index}")
    return Generator(rng, port).case(seed, index)


# --- running a case ------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What the server did with one case."""

    received: bytes = b""
    closed_by_server: bool = False
    timed_out: bool = False
    elapsed: float = 0.0


def run_case(port: int, case: Case) -> Outcome:
    """Send ``case`` on a fresh connection and read the answer, within CASE_TIMEOUT."""
    outcome = Outcome()
    started = time.monotonic()
    deadline = started + CASE_TIMEOUT
    received = bytearray()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT)
    except OSError as error:
        raise FuzzFailure(f"cannot connect to chatd: {error}") from None
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if case.pipelined or not case.frames:
                _send(sock, case.data, deadline)
            else:
                _send(sock, case.request, deadline)
                if _read_head(sock, received, deadline).startswith(b"HTTP/1.1 101 "):
                    for frame in case.frames:
                        _send(sock, frame, deadline)
            if case.ending == "abort":
                # RST instead of FIN: the server sees ECONNRESET, maybe mid-write.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                outcome.elapsed = time.monotonic() - started
                return outcome
            if case.ending == "eof":
                sock.shutdown(socket.SHUT_WR)
            quiet = QUIET if case.ending == "quiet" else None
            outcome.closed_by_server, outcome.timed_out = _read_until_close(
                sock, received, deadline, quiet
            )
        except TimeoutError:
            outcome.timed_out = True
        except OSError:  # reset, broken pipe, not connected: the server hung up on us
            outcome.closed_by_server = True
        if not outcome.closed_by_server:
            # Whatever the server still sends is discarded: close with RST at once.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    outcome.received = bytes(received)
    outcome.elapsed = time.monotonic() - started
    return outcome


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("case timeout")
    return remaining


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


def _read_head(sock: socket.socket, received: bytearray, deadline: float) -> bytes:
    """Read until a response head is complete (or EOF); return what was read so far."""
    while b"\r\n\r\n" not in received and len(received) < MAX_READ:
        sock.settimeout(_remaining(deadline))
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return bytes(received)


def _read_until_close(
    sock: socket.socket, received: bytearray, deadline: float, quiet: float | None
) -> tuple[bool, bool]:
    """Read until EOF, MAX_READ, the deadline, or ``quiet`` seconds of silence.

    Return (closed by the server, timed out).
    """
    while len(received) < MAX_READ:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, True
        sock.settimeout(min(remaining, quiet) if quiet is not None else remaining)
        try:
            data = sock.recv(min(65536, MAX_READ - len(received)))
        except TimeoutError:
            if quiet is not None and time.monotonic() < deadline:
                return False, False
            return False, True
        if not data:
            return True, False
        received += data
    return False, False


def inspect_answer(outcome: Outcome, seen: Counter[str] | None = None) -> list[str]:
    """Problems with what the server sent: a 500, a bad frame, an undocumented code.

    ``seen`` counts what came back (error codes, close codes, message types), to show
    how deep the cases reach.
    """
    seen = Counter() if seen is None else seen
    data = outcome.received
    if not data:
        return []
    if not data.startswith(b"HTTP/1.1 "[: len(data)]):
        return [f"answer is not HTTP/1.1: {data[:40]!r}"]
    try:
        parsed = parse_response_head(data)
    except InvalidHandshake as error:
        return [f"malformed response head: {error.reason}"]
    if parsed is None:
        return []  # cut short by MAX_READ or the client
    response, used = parsed
    if response.status not in HTTP_STATUSES:
        return [f"unexpected HTTP status {response.status} {response.reason}"]
    if response.status != 101:
        return []
    return _inspect_frames(data[used:], seen)


def _inspect_frames(data: bytes, seen: Counter[str]) -> list[str]:
    problems: list[str] = []
    parser = FrameParser(require_mask=False, max_data_payload=1 << 30)
    parser.feed(data)
    try:
        while (frame := parser.next_frame()) is not None:
            opcode, payload = frame.opcode, bytes(frame.payload)
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                seen[f"close:{code}"] += 1
                # 1011 is the server's own failure; a keepalive timeout cannot happen here.
                if code is not None and (not is_sendable_close_code(code) or code == 1011):
                    problems.append(f"server closed with code {code}")
            elif opcode == 0x1 and frame.fin:
                problems += _inspect_server_message(payload, seen)
            elif opcode not in (0x9, 0xA):
                problems.append(f"unexpected server frame {frame!r:.80}")
    except RemoteProtocolError as error:
        problems.append(f"server sent a malformed frame: {error.reason}")
    return problems


def _inspect_server_message(payload: bytes, seen: Counter[str]) -> list[str]:
    try:
        message = json.loads(payload)
    except ValueError:
        return [f"server sent a text frame that is not JSON: {payload[:60]!r}"]
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return [f"server sent JSON that is not a message: {payload[:60]!r}"]
    if message["type"] == "error":
        seen[f"error:{message.get('code')}"] += 1
        if message.get("code") not in ERROR_CODES:
            return [f"undocumented error code {message.get('code')!r}"]
    else:
        seen[message["type"]] += 1
    return []


# --- the server and the control client ----------------------------------------------------


class FuzzFailure(AssertionError):
    """The server crashed, hung, broke chat for others, grew, or answered wrongly."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Chatd:
    """``python -m chatd`` as a subprocess with its log in a file; stop it with ``stop``."""

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log_path = workdir / "chatd.log"
        self._log_file: TextIO = self.log_path.open("w")
        self._log_seen = 0
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatd",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db",
                str(workdir / "db.sqlite3"),
                "--log-level",
                "WARNING",
                *extra_args,
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise FuzzFailure(f"chatd exited at startup:\n{self.log()}")
            with contextlib.suppress(OSError, FuzzFailure):
                self.health()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise FuzzFailure(f"chatd did not answer /health within {STARTUP_TIMEOUT}s")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def new_log(self) -> str:
        """What the server logged since the last call (cheap when nothing was)."""
        size = self.log_path.stat().st_size
        if size == self._log_seen:
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_seen)
            text = log.read(size - self._log_seen).decode(errors="replace")
        self._log_seen = size
        return text

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        """VmRSS in bytes, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match is None:
            raise FuzzFailure("no VmRSS for chatd")
        return int(match[1]) * 1024

    def health(self) -> None:
        """GET /health must answer 200 {"status": "ok"} within CHECK_TIMEOUT."""
        deadline = time.monotonic() + CHECK_TIMEOUT
        answer = bytearray()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=CHECK_TIMEOUT) as s:
                _send(s, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", deadline)
                _read_until_close(s, answer, deadline, None)
        except OSError as error:  # TimeoutError included
            raise FuzzFailure(f"GET /health failed: {error!r}") from None
        if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(b'{"status":"ok"}\n'):
            raise FuzzFailure(f"GET /health answered {bytes(answer[:200])!r}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT: this process only, by its PID."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(STOP_TIMEOUT)
        finally:
            self._log_file.close()


class Control:
    """A client that chats normally: its messages must keep coming back, acknowledged."""

    def __init__(self, port: int) -> None:
        try:
            self.client = Client.connect(
                f"ws://127.0.0.1:{port}/ws?name=control", timeout=CHECK_TIMEOUT
            )
            welcome = json.loads(self.client.recv())
        except (OSError, InvalidHandshake, ConnectionClosed) as error:
            raise FuzzFailure(f"the control client cannot connect: {error!r}") from None
        self.user: str = welcome["user"]
        self.sent = 0

    def drain(self) -> None:
        """Read what piled up (broadcasts from fuzz sessions) so the server never waits."""
        with contextlib.suppress(TimeoutError):
            for _ in range(10_000):
                self.client.recv(timeout=0.001)

    def round_trip(self) -> float:
        """Send one message; return the seconds until its broadcast and its ack arrived."""
        self.sent += 1
        message_id = f"control-{self.sent}"
        started = time.monotonic()
        deadline = started + CHECK_TIMEOUT
        seen_broadcast = seen_ack = False
        try:
            self.client.send(
                json.dumps(
                    {
                        "type": "message",
                        "room": "lobby",
                        "text": f"check {self.sent}",
                        "id": message_id,
                    }
                )
            )
            while not (seen_broadcast and seen_ack):
                message = json.loads(
                    self.client.recv(timeout=max(deadline - time.monotonic(), 0.001))
                )
                if message.get("id") != message_id:
                    continue
                if message["type"] == "message" and message.get("from") == self.user:
                    seen_broadcast = True
                elif message["type"] == "ack":
                    seen_ack = True
                elif message["type"] == "error":
                    raise FuzzFailure(f"the control client's message was refused: {message}")
        except (OSError, ConnectionClosed) as error:  # TimeoutError included
            raise FuzzFailure(
                f"the control client's message {message_id} did not come back "
                f"(broadcast {seen_broadcast}, ack {seen_ack}): {error!r}"
            ) from None
        return time.monotonic() - started

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionClosed):
            self.client.close(timeout=1.0)


# --- the fuzz loop ----------------------------------------------------------------------------


@dataclass
class Stats:
    """What the run did, for the progress line and the final summary."""

    cases: int = 0
    checks: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    #: What the WebSocket cases got back: message types, error codes, close codes.
    seen: Counter[str] = field(default_factory=Counter)
    #: The first cases that used all of CASE_TIMEOUT (SEED:INDEX), to look into.
    timed_out: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    slowest_case: float = 0.0
    slowest_round_trip: float = 0.0
    rss_start: int = 0
    rss_peak: int = 0
    elapsed: float = 0.0

    def count(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.kinds[case.kind] += 1
        self.endings[case.ending] += 1
        self.bytes_sent += len(case.data)
        self.slowest_case = max(self.slowest_case, outcome.elapsed)
        head = outcome.received[:12]
        if not outcome.received:
            answer = "nothing"
        elif head.startswith(b"HTTP/1.1 ") and len(head) == 12:
            answer = head[9:12].decode(errors="replace")
        else:
            answer = "other"
        self.answers[answer] += 1
        if outcome.timed_out:
            self.answers["timed-out"] += 1
            if len(self.timed_out) < 20:
                self.timed_out.append(f"{case.seed}:{case.index}")

    def summary(self) -> str:
        mib = 1024 * 1024
        return (
            f"{self.cases} cases {dict(self.kinds)}, endings {dict(self.endings)}, "
            f"{self.bytes_sent / mib:.1f} MiB sent, answers {dict(self.answers.most_common())}, "
            f"WebSocket replies {dict(self.seen.most_common())}, "
            f"{self.checks} checks, slowest case {self.slowest_case:.2f}s, slowest round trip "
            f"{self.slowest_round_trip * 1000:.0f}ms, RSS {self.rss_start / mib:.1f} -> peak "
            f"{self.rss_peak / mib:.1f} MiB, {self.elapsed:.1f}s, timed out: "
            f"{' '.join(self.timed_out) or 'none'}"
        )


@dataclass
class FuzzRun:
    """One fuzzing session against one chatd process: the cases, the checks, the report."""

    seed: int
    workdir: Path
    check_every: int = 50
    rss_growth: int = DEFAULT_RSS_GROWTH
    chatd_args: Sequence[str] = ()
    progress: Callable[[str], None] | None = None
    progress_every: int = 1000
    stats: Stats = field(default_factory=Stats)

    def run(self, indices: Sequence[int]) -> Stats:
        """Run the cases ``indices``; raise FuzzFailure with a replayable report."""
        started = time.monotonic()
        server = Chatd(self.workdir, self.chatd_args)
        control: Control | None = None
        try:
            control = Control(server.port)
            self.stats.rss_start = self.stats.rss_peak = server.rss()
            first_unchecked = 0
            for position, index in enumerate(indices, 1):
                self._one_case(server, control, index)
                if position % self.check_every == 0 or position == len(indices):
                    self._check(server, control, indices[first_unchecked:position])
                    first_unchecked = position
                if self.progress is not None and position % self.progress_every == 0:
                    elapsed = time.monotonic() - started
                    self.progress(
                        f"{position}/{len(indices)} cases, {position / elapsed:.0f}/s, "
                        f"RSS {server.rss() / 2**20:.1f} MiB, answers "
                        f"{dict(self.stats.answers.most_common(6))}"
                    )
            control.close()
            control = None
            server.stop()
            if "Traceback" in server.log():
                raise FuzzFailure(self._report(server, [], ["a Traceback in the log"]))
        finally:
            if control is not None:
                control.close()
            server.stop()
        self.stats.elapsed = time.monotonic() - started
        return self.stats

    def _one_case(self, server: Chatd, control: Control, index: int) -> None:
        """Run one case and the checks that cost nothing: answer, process, log."""
        case = generate_case(self.seed, index, server.port)
        outcome = run_case(server.port, case)
        self.stats.count(case, outcome)
        problems = inspect_answer(outcome, self.stats.seen)
        if not server.alive():
            problems.append(f"chatd exited with {server.process.returncode}")
        if "Traceback" in server.new_log():
            problems.append("a Traceback in the log")
        if problems:
            raise FuzzFailure(self._report(server, [case], problems))
        control.drain()

    def _check(self, server: Chatd, control: Control, window: Sequence[int]) -> None:
        """The periodic checks; a failure names the cases since the previous check."""
        stats = self.stats
        try:
            if not server.alive():
                raise FuzzFailure(f"chatd exited with {server.process.returncode}")
            server.health()
            stats.slowest_round_trip = max(stats.slowest_round_trip, control.round_trip())
            rss = server.rss()
            stats.rss_peak = max(stats.rss_peak, rss)
            if rss > stats.rss_start + self.rss_growth:
                raise FuzzFailure(
                    f"VmRSS grew from {stats.rss_start / 2**20:.1f} to {rss / 2**20:.1f} MiB"
                )
            stats.checks += 1
        except FuzzFailure as failure:
            cases = [generate_case(self.seed, index, server.port) for index in window[-3:]]
            report = self._report(server, cases, [str(failure)], (window[0], window[-1]))
            raise FuzzFailure(report) from None

    def _report(
        self,
        server: Chatd,
        cases: list[Case],
        problems: list[str],
        window: tuple[int, int] | None = None,
    ) -> str:
        lines = ["chatd fuzz failure: " + "; ".join(problems)]
        if window is not None:
            first, last = window
            lines.append(f"caused by one of the cases {self.seed}:{first}-{last} (last ones below)")
            lines.append(f"find it: python -m tests.fuzz_chatd --replay {self.seed}:{first}-{last}")
        elif cases:
            lines.append(
                f"replay: python -m tests.fuzz_chatd --replay {self.seed}:{cases[-1].index}"
            )
        lines += [case.describe() for case in cases]
        log = server.log()
        if log:
            lines.append("server log (last 3000 characters):\n" + log[-3000:])
        return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------


def _parse_replay(text: str) -> tuple[int, list[int]]:
    seed, _, which = text.partition(":")
    first, _, last = which.partition("-")
    return int(seed), list(range(int(first), int(last or first) + 1))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fuzzer; exit 1 with a replayable report on the first failure."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_chatd", description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--start", type=int, default=0, help="the first case index")
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--rss-growth-mib", type=int, default=DEFAULT_RSS_GROWTH // 2**20)
    parser.add_argument(
        "--replay", metavar="SEED:INDEX[-LAST]", help="run these cases, checking after each"
    )
    parser.add_argument("--show", action="store_true", help="print the cases, send nothing")
    parser.add_argument(
        "--chatd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for python -m chatd (repeatable), e.g. --chatd-arg=--rate-limit=0",
    )
    args = parser.parse_args(argv)
    check_every = args.check_every
    if args.replay:
        seed, indices = _parse_replay(args.replay)
        check_every = 1
    else:
        seed = args.seed if args.seed is not None else random.randrange(10**6)
        indices = list(range(args.start, args.start + args.cases))
    if args.show:
        for index in indices:
            print(generate_case(seed, index, 8080).describe())
        return 0
    print(f"fuzzing chatd: seed {seed}, cases {indices[0]}-{indices[-1]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="chatd-fuzz-") as workdir:
        run = FuzzRun(
            seed,
            Path(workdir),
            check_every=check_every,
            rss_growth=args.rss_growth_mib * 2**20,
            chatd_args=args.chatd_arg,
            progress=lambda line: print(line, flush=True),
            progress_every=1 if args.replay else 1000,
        )
        try:
            stats = run.run(indices)
        except FuzzFailure as failure:
            print(failure, flush=True)
            return 1
    print("ok: " + stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
