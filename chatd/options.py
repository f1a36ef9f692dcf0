"""chatd's settings: one table, four sources, one precedence.

Every setting is an ``Option`` in ``OPTIONS``: its flag (``--rate-limit``), its environment
variable (``CHATD_RATE_LIMIT``), its key in the TOML file (``rate_limit``), its type, its
default (DESIGN.md's defaults table) and its help. ``load`` reads them all and keeps, for
each, the value that wins — command-line flag, then environment, then the file named by
``--config`` (or ``CHATD_CONFIG``), then the default — and where it came from, so that
``chatd check-config`` can show both. A bad value anywhere stops the start with a message
naming the setting and the source.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatd.bus import redacted

__all__ = ["OPTIONS", "ConfigError", "Loaded", "Option", "add_flags", "load"]

#: The environment variables' prefix.
ENV_PREFIX = "CHATD_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A setting has a bad value; the message names the setting and its source."""


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: how it is named in each source, its type, default and help."""

    name: str
    kind: str  # "str", "int", "float", "bool", "choice" or "list"
    default: Any
    help: str
    group: str = "general"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: Shown as ``********`` by ``check-config``.
    secret: bool = False
    #: None allowed (an optional path, "the default" computed later).
    optional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def convert(self, raw: Any, where: str) -> Any:
        """``raw`` (a string from a flag or the environment, or a TOML value) as this
        option's type; ``ConfigError`` naming the option and ``where`` otherwise.
        """
        try:
            value = self._convert(raw)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.name} ({where}): {error}") from None
        if self.minimum is not None and value is not None and value < self.minimum:
            raise ConfigError(f"{self.name} ({where}): at least {self.minimum:g}, not {value}")
        if self.maximum is not None and value is not None and value > self.maximum:
            raise ConfigError(f"{self.name} ({where}): at most {self.maximum:g}, not {value}")
        return value

    def _convert(self, raw: Any) -> Any:
        if raw is None and self.optional:
            return None
        kind = self.kind
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
                return raw.strip().lower() in _TRUE
            raise ValueError(f"true or false, not {raw!r}")
        if kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError(f"an integer, not {raw!r}")
            if isinstance(raw, int):
                return raw
            try:
                return int(raw.strip(), 10)
            except ValueError:
                raise ValueError(f"an integer, not {raw!r}") from None
        if kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError(f"a number, not {raw!r}")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"a number, not {raw!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"a finite number, not {raw!r}")
            return value
        if kind == "list":
            if isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
                return tuple(raw)
            raise ValueError(f"a list of strings, not {raw!r}")
        if not isinstance(raw, str):
            raise ValueError(f"a string, not {raw!r}")
        if kind == "choice":
            for choice in self.choices:  # case does not matter: INFO, info
                if raw.strip().lower() == choice.lower():
                    return choice
            raise ValueError(f"one of {', '.join(self.choices)}, not {raw!r}")
        return raw


def _options() -> tuple[Option, ...]:
    o = Option
    return (
        o("host", "str", "127.0.0.1", "address to listen on", "listen"),
        o(
            "port",
            "int",
            None,
            "port to listen on (default 8080, or 8443 with TLS)",
            "listen",
            minimum=0,
            maximum=65535,
            optional=True,
        ),
        o("db", "str", "var/chatd.sqlite3", "the SQLite database file", "storage"),
        o(
            "bus",
            "str",
            "local",
            "local (one node), or redis://host:port/db to share rooms with other nodes",
            "storage",
        ),
        o(
            "node_id",
            "str",
            None,
            "this node's name on the bus (default: host name and process id)",
            "storage",
            optional=True,
        ),
        o(
            "log_level",
            "choice",
            "INFO",
            "log level",
            "logging",
            ("DEBUG", "INFO", "WARNING", "ERROR"),
        ),
        o(
            "log_format",
            "choice",
            "text",
            "text, or json (one object per line)",
            "logging",
            ("text", "json"),
        ),
        o(
            "tls",
            "bool",
            False,
            "serve TLS with a certificate from --cert-dir, made if missing",
            "tls",
        ),
        o("cert_dir", "str", "var/tls", "where --tls keeps its certificate", "tls"),
        o(
            "certfile",
            "str",
            None,
            "serve TLS with this certificate chain (PEM)",
            "tls",
            optional=True,
        ),
        o("keyfile", "str", None, "the certificate's private key (PEM)", "tls", optional=True),
        o(
            "auth",
            "choice",
            "open",
            "open: guests pick a name; required: log in first",
            "auth",
            ("open", "required"),
        ),
        o(
            "secret_file",
            "str",
            None,
            "the token signing secret, made 0600 if missing (default: beside the database)",
            "auth",
            optional=True,
        ),
        o(
            "secret",
            "str",
            None,
            "the token signing secret itself (at least 32 characters)",
            "auth",
            secret=True,
            optional=True,
        ),
        o("token_ttl", "float", 43200.0, "seconds a login lasts", "auth", minimum=1),
        o("registration", "bool", False, "let visitors create accounts", "auth"),
        o(
            "login_attempts",
            "int",
            5,
            "failed logins per address per --login-window",
            "auth",
            minimum=1,
        ),
        o(
            "login_window",
            "float",
            60.0,
            "seconds over which failed logins count",
            "auth",
            minimum=1,
        ),
        o(
            "allow_origin",
            "list",
            (),
            "page origins besides chatd's own that may connect (repeatable)",
            "protection",
        ),
        o(
            "refuse_missing_origin",
            "bool",
            False,
            "refuse upgrades without an Origin header",
            "protection",
        ),
        o(
            "rate_limit",
            "float",
            10.0,
            "messages per second per connection (0: none)",
            "protection",
            minimum=0,
        ),
        o("rate_burst", "int", 20, "messages at once above the rate", "protection", minimum=1),
        o(
            "max_connections",
            "int",
            10_000,
            "WebSocket connections in all (0: no limit)",
            "protection",
            minimum=0,
        ),
        o(
            "max_connections_per_ip",
            "int",
            256,
            "connections per address, IPv6 per /64 (0: no limit)",
            "protection",
            minimum=0,
        ),
        o(
            "max_rooms",
            "int",
            50,
            "rooms one connection may be in (0: no limit)",
            "protection",
            minimum=0,
        ),
        o(
            "max_message_size",
            "int",
            65536,
            "bytes of one chat message (bigger: 1009)",
            "protection",
            minimum=1024,
        ),
        o("max_head_size", "int", 8192, "bytes of an HTTP request head", "protocol", minimum=1024),
        o("max_headers", "int", 64, "header fields in an HTTP request head", "protocol", minimum=8),
        o(
            "handshake_timeout",
            "float",
            10.0,
            "seconds to complete the opening handshake",
            "protocol",
            minimum=0.1,
        ),
        o(
            "ping_interval",
            "float",
            20.0,
            "seconds between keepalive pings (0: none)",
            "protocol",
            minimum=0,
        ),
        o(
            "ping_timeout",
            "float",
            20.0,
            "seconds to wait for a pong (0: forever)",
            "protocol",
            minimum=0,
        ),
        o(
            "close_timeout",
            "float",
            5.0,
            "seconds to wait for the closing handshake",
            "protocol",
            minimum=0.1,
        ),
        o(
            "write_limit",
            "int",
            1 << 20,
            "bytes waiting for a slow client before 1013",
            "protocol",
            minimum=1024,
        ),
        o(
            "history_on_join",
            "int",
            50,
            "messages sent with joined",
            "chat",
            minimum=0,
            maximum=200,
        ),
        o(
            "shutdown_timeout",
            "float",
            10.0,
            "seconds to drain on SIGTERM before exiting",
            "general",
            minimum=0,
        ),
    )


#: Every setting of ``chatd serve``.
OPTIONS: tuple[Option, ...] = _options()
_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(slots=True)
class Loaded:
    """The winning value of every option, and where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    config_file: Path | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def describe(self) -> str:
        """``name = value  (source)`` for every option, secrets hidden: for check-config."""
        lines = []
        width = max(len(option.name) for option in OPTIONS)
        for option in OPTIONS:
            value = self.values[option.name]
            shown = "********" if option.secret and value is not None else _show(value)
            if option.name == "bus":
                shown = redacted(shown)  # a Redis URL may carry a password
            lines.append(f"{option.name:<{width}} = {shown}  ({self.sources[option.name]})")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option, defaulting to *not given* so that lower sources can win."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    parser.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="a TOML file of settings"
    )
    for option in OPTIONS:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        default_text = _show(option.default) if option.default not in (None, ()) else None
        help_text = option.help + (f" (default {default_text})" if default_text else "")
        help_text += f"; env {option.env}"
        if option.kind == "bool":
            group.add_argument(
                option.flag,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif option.kind == "list":
            group.add_argument(
                option.flag,
                action="append",
                default=argparse.SUPPRESS,
                metavar=option.name.split("_")[-1].upper(),
                help=help_text,
            )
        else:
            group.add_argument(option.flag, default=argparse.SUPPRESS, help=help_text)


def load(
    flags: argparse.Namespace,
    environ: Mapping[str, str],
) -> Loaded:
    """Every option's value: flag, then environment, then TOML file, then default."""
    given = vars(flags)
    loaded = Loaded()
    config_path = given.get("config") or (
        Path(environ["CHATD_CONFIG"]) if environ.get("CHATD_CONFIG") else None
    )
    from_file: dict[str, Any] = {}
    if config_path is not None:
        loaded.config_file = Path(config_path)
        from_file = _read_toml(Path(config_path))
    for option in OPTIONS:
        if option.name in given:
            raw = given[option.name]
            if option.kind == "list":
                raw = tuple(item for value in raw for item in _split(value))
            value, source = option.convert(raw, f"flag {option.flag}"), "flag"
        elif option.env in environ:
            value = option.convert(environ[option.env], f"environment {option.env}")
            source = "environment"
        elif option.name in from_file:
            value = option.convert(from_file[option.name], f"file {config_path}")
            source = f"file {config_path}"
        else:
            value, source = option.default, "default"
        loaded.values[option.name] = value
        loaded.sources[option.name] = source
    return loaded


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's settings, keys as option names (``rate-limit`` or ``rate_limit``)."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"the config file {path} is not TOML: {error}") from None
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _BY_NAME:
            raise ConfigError(f"unknown setting {key!r} in {path}")
        settings[name] = value
    return settings


def option(name: str) -> Option:
    """The option called ``name``."""
    return _BY_NAME[name]


def names() -> Sequence[str]:
    """Every option's name, in the table's order."""
    return [option.name for option in OPTIONS]
