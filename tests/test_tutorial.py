"""docs/tutorial.md, followed for real.

chatd, the tracer in front of it and the command-line client run as processes started
with the commands the page shows (the fenced blocks after ``<!-- tutorial-command: NAME
-->``), with a temporary database and free ports in place of the page's. A ``websockets``
client plays bob's browser. The lines the reader types (``<!-- tutorial-input: WAIT
-->``) go to the client's stdin one at a time, each once the reply the page promises has
come (WAIT: ``ack``, ``pong`` or ``exit``). Then every excerpt marked ``<!--
tutorial-trace -->`` must match what the tracer printed, record by record, once what
differs from run to run (keys, offsets, session ids, timestamps, ports) is blanked out.

So a command, a flag, a field or a line of output that drifts from the code fails here.
The helpers for marked blocks and links serve ``test_howto.py`` too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from websockets.sync.client import connect as websockets_connect

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
TUTORIAL = DOCS / "tutorial.md"
TIMEOUT = 10.0
"""Seconds any single wait may take."""

_MARKED_BLOCK = re.compile(
    r"^<!-- (?P<kind>[\w-]+)(?:: (?P<name>[\w-]+))? -->\n```[\w-]*\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


# --- reading the page ---------------------------------------------------------------------


def marked_blocks(text: str, kind: str) -> list[tuple[str | None, str]]:
    """(name, body) of every fenced block right after ``<!-- kind -->`` or
    ``<!-- kind: name -->``, in page order."""
    return [
        (match["name"], match["body"])
        for match in _MARKED_BLOCK.finditer(text)
        if match["kind"] == kind
    ]


def named_block(text: str, kind: str, name: str) -> str:
    (body,) = [body for found, body in marked_blocks(text, kind) if found == name]
    return body.strip()


def slugify(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    heading = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    heading = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", heading)


def anchors_of(markdown: str) -> set[str]:
    """The anchors of every heading outside fenced code: its ``{#id}`` (attr_list) if it
    has one, else the slug of its text."""
    anchors = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"#{1,6} (.+?)(?: \{#([\w-]+)[^}]*\})?$", line)):
            anchors.add(heading[2] or slugify(heading[1]))
    return anchors


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or anchor does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_file() or (anchor and anchor not in anchors_of(linked.read_text())):
            broken.append(target)
    return broken


# --- running the commands -----------------------------------------------------------------


def localize(command: str, ports: dict[int, int]) -> list[str]:
    """The page's command as argv for this test: the venv's python is this one, and each
    port the page names is the real port of the process started for it, or 0 (a free
    one) for the process about to listen there."""
    argv = [sys.executable if word == ".venv/bin/python" else word for word in shlex.split(command)]

    def port(match: re.Match[str]) -> str:
        return f"{match[1]}{ports.get(int(match[2]), 0)}"

    localized = [re.sub(r"(127\.0\.0\.1:)(\d+)", port, word) for word in argv]
    for index, word in enumerate(localized[:-1]):
        if word == "--port":
            localized[index + 1] = str(ports.get(int(localized[index + 1]), 0))
    return localized


def environment() -> dict[str, str]:
    """This environment without chatd's settings and systemd's hand-overs."""
    handed_over = {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC"}
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CHATD_") and name not in handed_over
    }


def run(argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a command to its end, with ``stdin`` as its input."""
    return subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=environment(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


class Process:
    """A process whose stdout and stderr lines are collected by two threads."""

    def __init__(self, argv: list[str], *, stdin: bool = False) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=environment(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._open_streams = 2
        for stream, lines in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True).start()

    def _collect(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    def wait_for(self, lines: list[str], pattern: str) -> re.Match[str]:
        """The match of ``pattern`` in the first line of ``lines`` (stdout or stderr) that
        has one, waiting for it as long as the process may still print it."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while True:
                for line in lines:
                    if match := re.search(pattern, line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._open_streams == 0:  # too late, or it has ended
                    raise AssertionError(f"{self.argv[1:4]}: no {pattern!r}; {self.stderr}")
                self._changed.wait(min(remaining, 0.1))

    def listening_port(self, pattern: str) -> int:
        return int(self.wait_for(self.stderr, pattern)[1])

    def type_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(TIMEOUT)


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """``start(argv, stdin=False)``: a ``Process``, stopped after the test."""
    started: list[Process] = []

    def start(argv: list[str], *, stdin: bool = False) -> Process:
        process = Process(argv, stdin=stdin)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


# --- comparing the tracer's output with the page ------------------------------------------

_VARIABLE = [
    (re.compile(r"\[#\d+ "), "[#N "),
    (re.compile(r"at byte \d+"), "at byte N"),
    (re.compile(r"mask key( [0-9a-f]{2}){4}"), "mask key K"),
    (re.compile(r"(Sec-WebSocket-(?:Key|Accept): )\S+"), r"\1V"),
    (re.compile(r'"session":"[\w-]{16}"'), '"session":"S"'),
    (re.compile(r'"ts":\d+'), '"ts":T'),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:P"),
    (re.compile(r"\(\d+\.\d ms\)$"), "(T ms)"),
]

# What a compressor writes depends on the zlib build (zlib-ng writes other bytes).
_COMPRESSED = [
    (re.compile(r"length   \d+ "), "length   L "),
    (re.compile(r"payload  [0-9a-f ]+ \(hex\)"), "payload  HEX (hex)"),
]

Record = tuple[str, list[str]]
Rules = list[tuple[re.Pattern[str], str]]


def normalize(line: str, rules: Rules = _VARIABLE) -> str:
    for pattern, replacement in rules:
        line = pattern.sub(replacement, line)
    return line


def records(lines: list[str], rules: Rules = _VARIABLE) -> list[Record]:
    """Lines cut into records: a title line and the indented lines under it."""
    cut: list[Record] = []
    for line in (normalize(line, rules) for line in lines):
        if line.startswith(" ") and cut:
            cut[-1][1].append(line)
        elif line.strip():
            cut.append((line, []))
    return cut


def is_subsequence(wanted: list[str], lines: list[str]) -> bool:
    remaining = iter(lines)
    return all(line in remaining for line in wanted)


def unmatched(excerpt: str, printed: list[str], rules: Rules = _VARIABLE) -> list[Record]:
    """The records of ``excerpt`` that no record of ``printed`` shows (same title, and
    the excerpt's lines in order among the record's lines)."""
    seen = records(printed, rules)
    return [
        (title, body)
        for title, body in records(excerpt.splitlines(), rules)
        if not any(title == other and is_subsequence(body, lines) for other, lines in seen)
    ]


def assert_trace_shows(excerpts: list[str], tracer: Process, rules: Rules = _VARIABLE) -> None:
    """Every excerpt matches the tracer's output (which may still be arriving)."""
    assert excerpts
    deadline = time.monotonic() + TIMEOUT
    while missing := [
        record for excerpt in excerpts for record in unmatched(excerpt, tracer.stdout, rules)
    ]:
        if time.monotonic() > deadline:
            shown = "\n".join(tracer.stdout)
            raise AssertionError(f"the tracer never printed {missing}; it printed:\n{shown}")
        time.sleep(0.05)


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page() -> str:
    return TUTORIAL.read_text(encoding="utf-8")


def test_make_run_runs_the_command_the_page_gives(page: str) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    defaults = dict(re.findall(r"^(\w+) \?= (.+)$", makefile, re.MULTILINE))
    (recipe,) = re.findall(
        r"^run: .*\n(?:\t.*\n)*?\t\$\(PY\) (-m chatd .*)$", makefile, re.MULTILINE
    )
    expanded = re.sub(r"\$\((\w+)\)", lambda match: defaults[match[1]], recipe)
    assert named_block(page, "tutorial-command", "chatd") == f".venv/bin/python {expanded}"


def test_links_and_anchors_exist() -> None:
    assert broken_links(TUTORIAL) == []


def test_chat_through_the_tracer(
    page: str, processes: Callable[..., Process], tmp_path: Path
) -> None:
    ports: dict[int, int] = {}
    chatd_argv = localize(named_block(page, "tutorial-command", "chatd"), ports)
    chatd_argv[chatd_argv.index("--db") + 1] = str(tmp_path / "chatd.sqlite3")
    chatd = processes(chatd_argv)
    ports[8080] = chatd.listening_port(r"listening on http://127\.0\.0\.1:(\d+)/")

    tracer = processes(localize(named_block(page, "tutorial-command", "tracer"), ports))
    ports[9000] = tracer.listening_port(r"tracing on 127\.0\.0\.1:(\d+) ->")

    # Step 3: bob's browser, connected through the tracer, says nothing.
    with websockets_connect(
        f"ws://127.0.0.1:{ports[9000]}/ws?name=bob", open_timeout=TIMEOUT
    ) as bob:
        while json.loads(bob.recv(TIMEOUT))["type"] != "joined":
            pass

        # Steps 4 to 7: alice types each line once the reply to the last one arrived.
        client_argv = localize(named_block(page, "tutorial-command", "client"), ports)
        assert client_argv[-1] == f"ws://127.0.0.1:{ports[9000]}/ws?name=alice"
        alice = processes(client_argv, stdin=True)
        alice.wait_for(alice.stdout, '"type":"joined"')
        inputs = marked_blocks(page, "tutorial-input")
        assert [wait for wait, _ in inputs] == ["ack", "pong", "exit"]
        for wait, typed in inputs:
            alice.type_line(typed.strip())
            if wait == "ack":
                alice.wait_for(alice.stdout, '"type":"ack"')
            elif wait == "pong":
                payload = typed.strip().removeprefix("/ping ")
                alice.wait_for(alice.stdout, f"^pong {re.escape(payload)} ")
            else:
                assert alice.popen.wait(TIMEOUT) == 0, alice.stderr
        assert "closed: 1000" in alice.stderr
        # What the page shows the client printing (in a terminal, received lines get "< ").
        printed = [normalize(line) for line in alice.stdout]
        for _, block in marked_blocks(page, "tutorial-output"):
            for line in block.splitlines():
                if line.startswith("< "):
                    assert normalize(line.removeprefix("< ")) in printed, line

        # bob got alice's message: the broadcast the page shows on his connection.
        message = json.loads(bob.recv(TIMEOUT))
        while message["type"] != "message":
            message = json.loads(bob.recv(TIMEOUT))
        assert (message["from"], message["text"]) == ("alice", "hello, wire!")

    excerpts = [body for name, body in marked_blocks(page, "tutorial-trace") if name is None]
    assert_trace_shows(excerpts, tracer)


def test_compressed_frame(page: str, processes: Callable[..., Process]) -> None:
    ports: dict[int, int] = {}
    echo = processes(localize(named_block(page, "tutorial-command", "echo"), ports))
    ports[9001] = echo.listening_port(r"listening on ws://127\.0\.0\.1:(\d+)/")
    tracer = processes(localize(named_block(page, "tutorial-command", "tracer-echo"), ports))
    ports[9002] = tracer.listening_port(r"tracing on 127\.0\.0\.1:(\d+) ->")

    producer, _, client = named_block(page, "tutorial-command", "client-echo").partition(" | ")
    word, text = shlex.split(producer)
    assert word == "echo"
    result = run(localize(client, ports), text + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [text]

    excerpt = named_block(page, "tutorial-trace", "deflate")
    assert_trace_shows([excerpt], tracer, _VARIABLE + _COMPRESSED)
    # The bytes themselves: the page's and the tracer's are the text, deflated (RFC 7692
    # section 7.2.2: the sender removed the 00 00 ff ff that ends a flushed block).
    for shown in (excerpt.splitlines(), tracer.stdout):
        payloads = [
            bytes.fromhex(match[1])
            for line in shown
            if (match := re.fullmatch(r"  payload  ([0-9a-f ]+) \(hex\)", line))
        ]
        assert len(payloads) == 2  # the message and its echo
        for payload in payloads:
            inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            assert inflated.decode() == text
            assert len(payload) < len(inflated)


def test_an_excerpt_that_drifted_is_caught() -> None:
    printed = [
        "[#4 client → server] frame at byte 236: TEXT (0x1)",
        "  MASK     1 (masked)",
        "  mask key 2b 81 27 38",
        "  payload  'hello' (text)",
    ]
    same = "[#1 client → server] frame at byte 9: TEXT (0x1)\n  mask key 00 11 22 33\n"
    assert unmatched(same, printed) == []
    drifted = "[#1 client → server] frame at byte 9: TEXT (0x1)\n  MASK     0 (not masked)\n"
    assert unmatched(drifted, printed) != []
