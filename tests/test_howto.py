"""The how-to guides in docs/howto/, run for real.

Each page marks what it promises. ``<!-- howto-example: NAME -->`` is a complete Python
program: it is saved to a temporary file and run against real loopback peers written
independently of this library (``websockets``, ``websocket-client``), and
``<!-- howto-output: NAME -->`` is what it must print. ``<!-- howto-console -->`` blocks
are ``$ command`` lines followed by their exact output. ``<!-- howto-commands: NAME -->``
blocks are command lines a test runs with free ports and temporary files in place of the
page's. Every ``--flag`` a page writes must appear in the ``--help`` of a command the page
runs, and every relative link and anchor must exist.
"""

from __future__ import annotations

import http.client
import re
import shlex
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websocket
from test_tutorial import (
    REPO_ROOT,
    TIMEOUT,
    Process,
    broken_links,
    localize,
    marked_blocks,
    named_block,
    processes,
    run,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websockets_connect
from websockets.sync.server import Server as WebsocketsServer
from websockets.sync.server import ServerConnection as WebsocketsConnection
from websockets.sync.server import serve as websockets_serve
from websockets.typing import Subprotocol

from tls.localca import issue_leaf

__all__ = ["processes"]  # the fixture, shared with test_tutorial

HOWTO = REPO_ROOT / "docs" / "howto"
PAGES = sorted(HOWTO.glob("*.md"))
# Flags of programs that are not ours, which the pages mention in passing.
FOREIGN_FLAGS = {"--cacert"}


def page_text(name: str) -> str:
    return (HOWTO / name).read_text(encoding="utf-8")


def example(page: str, name: str, tmp_path: Path) -> Path:
    """The page's example ``name``, saved as a script."""
    script = tmp_path / f"{name}.py"
    script.write_text(named_block(page_text(page), "howto-example", name) + "\n")
    return script


# --- every page -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_and_anchors_exist(page: Path) -> None:
    assert broken_links(page) == []


def command_lines(markdown: str) -> list[str]:
    """Our commands in the page's ``sh`` and ``console`` blocks, one per pipeline stage."""
    lines = []
    for block in re.findall(r"^```(?:sh|console)\n(.*?)^```$", markdown, re.M | re.S):
        for line in block.splitlines():
            for stage in line.removeprefix("$ ").split(" | "):
                if stage.startswith(".venv/bin/python -m "):
                    lines.append(stage)
    return lines


_helps: dict[tuple[str, ...], str] = {}


def help_of(command: str) -> str:
    """``--help`` of a command line's program (and subcommand, for chatd)."""
    words = shlex.split(command)[2:4]
    program = tuple(words if words[-1] in ("cert", "serve", "check-config") else words[:1])
    if program not in _helps:
        result = run([sys.executable, "-m", *program, "--help"])
        assert result.returncode == 0, result.stderr
        _helps[program] = result.stdout
    return _helps[program]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_flag_exists(page: Path) -> None:
    markdown = page.read_text(encoding="utf-8")
    commands = command_lines(markdown)
    assert commands, "a how-to runs something"
    for command in commands:  # a flag on a command line: in that command's help
        for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*)", command):
            assert re.search(rf"{flag}\b", help_of(command)), f"{flag} in {command!r}"
    helps = "\n".join(help_of(command) for command in commands)
    for flag in set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", markdown)) - FOREIGN_FLAGS:
        assert re.search(rf"{flag}\b", helps), f"{flag} is in no --help of {page.name}"


def console_blocks() -> list[tuple[str, str, str]]:
    """(page, command, expected output) of each unnamed ``howto-console`` block."""
    found = []
    for page in PAGES:
        for name, body in marked_blocks(page.read_text(encoding="utf-8"), "howto-console"):
            if name is None:
                command, _, output = body.partition("\n")
                found.append((page.name, command.removeprefix("$ "), output))
    return found


@pytest.mark.parametrize(("page", "command", "output"), console_blocks())
def test_console_block_prints_what_the_page_shows(page: str, command: str, output: str) -> None:
    result = run(localize(command, {}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


# --- library-server.md ------------------------------------------------------------------------


def test_server_example(tmp_path: Path, processes: Callable[..., Process]) -> None:
    server = processes([sys.executable, str(example("library-server.md", "server", tmp_path)), "0"])
    port = int(server.wait_for(server.stdout, r"listening on ws://127\.0\.0\.1:(\d+)/room")[1])
    url = f"ws://127.0.0.1:{port}/room"

    # Refusals, from on_connect, with the status and the reason as the body.
    for target, status in (("/nope", 404), ("/room?name=a%20b", 400), ("/room", 400)):
        with pytest.raises(InvalidStatus) as refused:
            websockets_connect(f"ws://127.0.0.1:{port}{target}", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == status
    assert refused.value.response.body == b"?name= must be letters and digits\n"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"connect a WebSocket to /room?name=yourname\n"
    connection.close()

    with websockets_connect(
        f"{url}?name=alice", subprotocols=[Subprotocol("room.v1")], open_timeout=TIMEOUT
    ) as alice:
        assert alice.subprotocol == "room.v1"
        assert alice.response is not None
        assert alice.response.headers["X-Room-Size"] == "0"
        assert alice.recv(TIMEOUT) == "hello alice (room.v1)"
        bob = websocket.create_connection(f"{url}?name=bob", timeout=TIMEOUT)
        try:
            assert bob.recv() == "hello bob (None)"
            assert alice.recv(TIMEOUT) == "bob joined"
            alice.send("hi")  # a text message goes to everyone
            assert (alice.recv(TIMEOUT), bob.recv()) == ("alice: hi", "alice: hi")
            bob.send_binary(b"\x00\xff")  # a binary one back to its sender only
            assert bob.recv() == b"\x00\xff"
            # Over max_message_size: alice is closed with 1009 and bob is told.
            alice.send("x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as closed:
                alice.recv(TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            assert bob.recv() == "alice left (1009)"
            # SIGTERM: request_shutdown, then every client gets 1001.
            server.popen.send_signal(signal.SIGTERM)
            opcode, frame = bob.recv_data_frame(True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert frame.data[:2] == (1001).to_bytes(2, "big")
        finally:
            # websocket-client has answered the close; shutdown() closes its socket, and
            # the server, which waits for that (up to close_timeout), can exit.
            bob.shutdown()  # type: ignore[no-untyped-call]
    assert server.popen.wait(TIMEOUT) == 0, server.stderr


# --- library-client.md ------------------------------------------------------------------------


def echo(connection: WebsocketsConnection) -> None:
    for message in connection:
        connection.send(message)


@pytest.fixture
def websockets_echo() -> Iterator[Callable[..., int]]:
    """``start(ssl_context=None)``: a ``websockets`` echo server on 127.0.0.1; its port."""
    servers: list[WebsocketsServer] = []

    def start(ssl_context: ssl.SSLContext | None = None) -> int:
        server = websockets_serve(echo, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port: int = server.socket.getsockname()[1]
        return port

    yield start
    for server in servers:
        server.shutdown()


def test_client_example_over_ws_and_wss(
    tmp_path: Path, websockets_echo: Callable[..., int]
) -> None:
    page = page_text("library-client.md")
    script = example("library-client.md", "client", tmp_path)
    expected = named_block(page, "howto-output", "client").splitlines()

    result = run([sys.executable, str(script), f"ws://127.0.0.1:{websockets_echo()}/"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected

    files = issue_leaf(tmp_path / "tls", ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.certfile, files.keyfile)
    wss = f"wss://127.0.0.1:{websockets_echo(context)}/"
    result = run([sys.executable, str(script), wss, str(files.cafile)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected
    # Without the CA the certificate is not trusted, and nothing is sent.
    result = run([sys.executable, str(script), wss])
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert result.stdout == ""


# --- trace.md -----------------------------------------------------------------------------------


def test_trace_json_and_the_summary_line(tmp_path: Path, processes: Callable[..., Process]) -> None:
    page = page_text("trace.md")
    server_line, tracer_line, client_line = named_block(page, "howto-commands", "json").splitlines()
    ports: dict[int, int] = {}
    server = processes(localize(server_line, ports))
    ports[9001] = server.listening_port(r"listening on ws://127\.0\.0\.1:(\d+)/")
    tracer_command, _, jsonl = tracer_line.partition(" > ")
    tracer = processes(localize(tracer_command, ports))
    ports[9000] = tracer.listening_port(r"tracing on 127\.0\.0\.1:(\d+) ->")

    printf, _, client = client_line.partition(" | ")
    word, typed = shlex.split(printf)
    assert word == "printf"
    result = run(localize(client, ports), typed.replace("\\n", "\n"))
    assert result.returncode == 0, result.stderr
    tracer.wait_for(tracer.stdout, r'"direction": "server → client".*"opcode_name": "CLOSE"')
    tracer.stop()
    (tmp_path / jsonl).write_text("\n".join(tracer.stdout) + "\n")

    command, _, output = named_block(page, "howto-console", "summary").partition("\n")
    summary_command, _, source = command.removeprefix("$ ").partition(" < ")
    summary = run(localize(summary_command, ports), (tmp_path / source).read_text())
    assert summary.returncode == 0, summary.stderr
    # The same lines, in an order that depends on timing: the two directions interleave as
    # the bytes came, and a server that reads "hello" and the ping at once pongs first.
    assert sorted(summary.stdout.splitlines()) == sorted(output.splitlines())


# --- wss-local.md -----------------------------------------------------------------------------


def test_wss_local(tmp_path: Path, processes: Callable[..., Process]) -> None:
    page = page_text("wss-local.md")
    commands = command_lines(page)
    cert_dir = tmp_path / "tls"

    # chatd cert (the local CA, so that mkcert's own CA directory is left alone).
    (cert_command,) = [line for line in commands if line.split()[3:4] == ["cert"]]
    made = run([*localize(cert_command, {}), "--dir", str(cert_dir), "--no-mkcert"])
    assert made.returncode == 0, made.stderr
    assert "Certificate issued by local CA" in made.stdout
    assert {path.name for path in cert_dir.iterdir()} == {
        "ca.pem",
        "ca-key.pem",
        "cert.pem",
        "key.pem",
    }

    # chatd --tls, on that certificate.
    (serve_command,) = [line for line in commands if line.endswith(" --tls")]
    database = str(tmp_path / "chatd.sqlite3")
    chatd = processes(
        [*localize(serve_command, {}), "--cert-dir", str(cert_dir), "--db", database, "--port", "0"]
    )
    port = chatd.listening_port(r"listening on https://127\.0\.0\.1:(\d+)/")
    assert any("issued by local CA" in line for line in chatd.stderr)

    # The client with --cafile (127.0.0.1, which the certificate names, for localhost).
    client_command = named_block(page, "howto-commands", "wss-client")
    client_command = client_command.replace("localhost", "127.0.0.1")
    argv = localize(client_command, {8443: port})
    argv[argv.index("--cafile") + 1] = str(cert_dir / "ca.pem")
    result = run(argv, '{"type":"ping","id":"p-1"}\n')
    assert result.returncode == 0, result.stderr
    assert '"type":"pong"' in result.stdout

    # Without it: the message the page quotes.
    without = argv[: argv.index("--cafile")]
    result = run(without, "x\n")
    assert result.returncode == 1
    assert result.stderr.strip() in page
    assert result.stderr.startswith("TLS certificate verification failed: unable to get local")

    # Plain HTTP on the TLS port.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request("GET", "/")
    response = connection.getresponse()
    assert (response.status, response.read()) == (
        400,
        b"This port speaks TLS: use https:// or wss://.\n",
    )
    connection.close()
    assert "This port speaks TLS: use https:// or wss://." in page
