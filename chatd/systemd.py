"""systemd integration, written against the documented protocols (standard library only).

Four small protocols, each a few environment variables and a socket:

- readiness and status (sd_notify(3)): datagrams of ``KEY=VALUE`` lines to the
  ``AF_UNIX`` socket named by ``NOTIFY_SOCKET``, for ``Type=notify`` and
  ``Type=notify-reload`` services (systemd.service(5));
- the watchdog (sd_watchdog_enabled(3)): ``WATCHDOG=1`` more often than
  ``WATCHDOG_USEC``, sent from the event loop so that a stuck loop gets restarted;
- socket activation (sd_listen_fds(3)): listening sockets inherited from fd 3 on,
  described by ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``;
- the journal (systemd.exec(5), ``JOURNAL_STREAM``): whether stderr goes to journald,
  which stamps every line itself.

Every function takes the environment as an argument (``os.environ`` by default) so that
tests, and a caller that wants to look before it leaps, can pass a plain dict.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rfc6455.server import Server

__all__ = [
    "LISTEN_FDS_START",
    "ActivatedSocket",
    "Notifier",
    "SystemdError",
    "is_tls_name",
    "journal_stream",
    "listen_fds",
    "schedule_watchdog",
    "watchdog_interval",
]

logger = logging.getLogger("chatd.systemd")

#: sd_listen_fds(3): the first passed descriptor; 0, 1 and 2 stay stdin, stdout, stderr.
LISTEN_FDS_START = 3

#: Seconds between two log lines about dropped notifications: a vanished or full notify
#: socket would otherwise log at every watchdog ping.
NOTIFY_ERROR_LOG_INTERVAL = 60.0

#: Socket names (``FileDescriptorName=`` in the .socket unit) that get the TLS context.
TLS_SOCKET_NAMES = frozenset({"tls", "https", "wss"})


class SystemdError(Exception):
    """The environment systemd handed us is malformed or describes unusable sockets.

    Raised at startup, where refusing loudly beats serving on the wrong socket or being
    killed later by a watchdog we misread.
    """


# --- sd_notify(3) ------------------------------------------------------------------------


class Notifier:
    """Sends sd_notify(3) state changes to the service manager; a no-op outside systemd.

    One non-blocking ``AF_UNIX``/``SOCK_DGRAM`` socket per notifier, kept open. Sending
    never blocks the event loop and never raises: a message that cannot be delivered (the
    socket vanished, its queue is full) is dropped and logged at most once a minute,
    because notifications are advice to the manager, not part of serving.
    """

    def __init__(self, address: str | None) -> None:
        """``address`` is ``NOTIFY_SOCKET``: a path, ``@name`` for an abstract socket, or
        None (or empty) for no service manager.
        """
        self.address: str | None = None
        self._sock: socket.socket | None = None
        self._last_error_log: float | None = None
        self._dropped = 0
        if not address:
            return
        # sd_notify(3): "/" starts a file system path, "@" an abstract socket (the "@"
        # stands for the leading NUL byte). Anything else (vsock:…) we do not speak.
        if address[0] not in "/@":
            logger.warning("NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", address)
            return
        self.address = "\0" + address[1:] if address[0] == "@" else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``, as systemd sets it for ``Type=notify``."""
        return cls(environ.get("NOTIFY_SOCKET"))

    def __repr__(self) -> str:
        return f"<Notifier {self.address!r}>" if self.enabled else "<Notifier disabled>"

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (and ``close()`` was not called)."""
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; return whether the kernel took it.

        Newlines inside a value would start a new assignment, so they become spaces.
        """
        if self._sock is None or self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            if not key or "=" in key or "\n" in key:
                raise ValueError(f"bad sd_notify field name {key!r}")
            text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
            lines.append(f"{key}={text}")
        message = "\n".join(lines).encode()
        try:
            # sendto, not connect: a socket systemd re-creates (daemon-reexec) is found
            # again by its name, where a connected socket would stay bound to the old one.
            self._sock.sendto(message, self.address)
        except OSError as error:  # BlockingIOError (queue full) included: drop, never wait
            self._report_drop(error)
            return False
        return True

    def _report_drop(self, error: OSError) -> None:
        now = time.monotonic()
        self._dropped += 1
        if (
            self._last_error_log is not None
            and now - self._last_error_log < NOTIFY_ERROR_LOG_INTERVAL
        ):
            return
        logger.warning(
            "cannot notify systemd at %r: %s (%d message(s) dropped since the last report)",
            self.address,
            error,
            self._dropped,
        )
        self._last_error_log = now
        self._dropped = 0

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: ``READY=1``, with an optional status line."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status, shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: ``STOPPING=1``, so systemd shows "deactivating" meanwhile."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """A reload began: ``RELOADING=1`` with ``MONOTONIC_USEC``, which systemd 253+
        needs for ``Type=notify-reload`` to tell this reload from an older one. Send
        ``ready()`` when it is done.
        """
        fields: dict[str, str | int] = {
            "RELOADING": 1,
            "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
        }
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def watchdog(self) -> bool:
        """A keep-alive ping: ``WATCHDOG=1`` (see ``schedule_watchdog``)."""
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket; later notifications are no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- sd_watchdog_enabled(3) --------------------------------------------------------------


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings, or None when systemd expects none (sd_watchdog_enabled(3)).

    ``WATCHDOG_USEC`` is the timeout; the man page recommends pinging every half of it.
    ``WATCHDOG_PID``, when set, names the process that must ping: if it is not ``pid``
    (default: ours), the pings are someone else's job. A malformed value raises
    ``SystemdError``: ignoring it would get the service killed when the timeout expires.
    """
    timeout_text = environ.get("WATCHDOG_USEC")
    if timeout_text is None:
        return None
    timeout_usec = _parse_positive(timeout_text, "WATCHDOG_USEC")
    pid_text = environ.get("WATCHDOG_PID")
    our_pid = os.getpid() if pid is None else pid
    if pid_text is not None and _parse_positive(pid_text, "WATCHDOG_PID") != our_pid:
        return None
    return timeout_usec / 1_000_000 / 2


def schedule_watchdog(server: Server, notifier: Notifier, interval: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds from ``server``'s event loop.

    The pings ride on the loop's own timers on purpose: a loop stuck in a handler or a
    busy loop stops them, and systemd (``WatchdogSec=``) restarts the service. The first
    ping goes out after one interval, once the loop runs, not at once.
    """
    if interval <= 0:
        raise ValueError("the watchdog interval must be positive")

    def ping() -> None:
        server.call_later(interval, ping)  # reschedule first: a ping never stops the chain
        notifier.watchdog()

    server.call_later(interval, ping)


# --- sd_listen_fds(3) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    """A listening socket systemd passed us, with its ``FileDescriptorName=``."""

    sock: socket.socket
    name: str
    fd: int
    family: socket.AddressFamily
    #: ``getsockname()``: ``(host, port)`` for TCP, a path (str) or abstract name (bytes).
    address: Any


def listen_fds(
    environ: MutableMapping[str, str] = os.environ,
    pid: int | None = None,
    *,
    unset: bool = True,
) -> list[ActivatedSocket]:
    """The listening sockets systemd passed us (sd_listen_fds(3)), in the unit's order.

    An empty list when not socket-activated: no ``LISTEN_PID``, or one that is not ``pid``
    (default: ours; the variables were meant for another process). Descriptors are taken
    from fd 3 on, made close-on-exec, and checked to be listening ``SOCK_STREAM`` sockets,
    since the server can only accept on those. Malformed variables, a name count that
    does not match ``LISTEN_FDS``, or an unusable descriptor raise ``SystemdError``, and
    then no descriptor is closed or kept. With ``unset``, the three variables are removed
    from ``environ`` whatever the outcome, so that child processes do not inherit them.
    """
    try:
        return _listen_fds(environ, os.getpid() if pid is None else pid)
    finally:
        if unset:
            for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                environ.pop(variable, None)


def _listen_fds(environ: Mapping[str, str], pid: int) -> list[ActivatedSocket]:
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None:
        return []
    if _parse_positive(pid_text, "LISTEN_PID") != pid:
        return []
    count = _parse_positive(environ.get("LISTEN_FDS", ""), "LISTEN_FDS")
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = ["unknown"] * count  # sd_listen_fds_with_names(3)'s default
    else:
        names = names_text.split(":")
        if len(names) != count:
            raise SystemdError(
                f"LISTEN_FDNAMES has {len(names)} name(s) for LISTEN_FDS={count} descriptor(s)"
            )
    activated: list[ActivatedSocket] = []
    try:
        for offset, name in enumerate(names):
            activated.append(_activated_socket(LISTEN_FDS_START + offset, name))
    except SystemdError:
        for item in activated:
            item.sock.detach()  # refuse without closing what the caller still owns
        raise
    return activated


def _activated_socket(fd: int, name: str) -> ActivatedSocket:
    """Check that ``fd`` is a listening stream socket and wrap it."""
    try:
        # Close-on-exec: a program we run (mkcert) must not keep our listener open.
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family, type and protocol come from the kernel
    except OSError as error:
        raise SystemdError(f"passed fd {fd} ({name}) is not a usable socket: {error}") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise SystemdError(
                f"passed fd {fd} ({name}) is a {sock.type.name} socket, not SOCK_STREAM; "
                "use ListenStream= in the .socket unit"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SystemdError(f"passed fd {fd} ({name}) is a socket that is not listening")
        address = sock.getsockname()
    except SystemdError:
        sock.detach()
        raise
    except OSError as error:
        sock.detach()
        raise SystemdError(f"passed fd {fd} ({name}): {error}") from None
    return ActivatedSocket(sock=sock, name=name, fd=fd, family=sock.family, address=address)


def is_tls_name(name: str) -> bool:
    """Whether an activated socket's name asks for TLS: ``tls``, ``https``, ``wss``, or
    anything ending in ``-tls`` (``FileDescriptorName=`` in the .socket unit).
    """
    name = name.lower()
    return name in TLS_SOCKET_NAMES or name.endswith("-tls")


def _parse_positive(text: str, variable: str) -> int:
    """A positive decimal integer, as systemd writes them, or ``SystemdError``."""
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise SystemdError(f"{variable}={text!r} is not a positive integer")
    return int(text)


# --- JOURNAL_STREAM (systemd.exec(5)) -----------------------------------------------------


def journal_stream(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether ``fd`` (stderr) is connected to the journal, per systemd.exec(5).

    systemd sets ``JOURNAL_STREAM=device:inode`` of the stream it connected; comparing
    with ``fstat`` tells whether stderr is still that stream (not redirected by a shell).
    The journal timestamps each line, so logging can leave its own timestamps out.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))
