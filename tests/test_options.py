"""chatd's configuration: flags over environment over TOML file over defaults, and a
clear refusal of every kind of bad value, through ``chatd check-config`` as an operator
runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from chatd.logs import JournalFormatter, JsonFormatter
from chatd.options import OPTIONS, ConfigError, add_flags, load

REPO_ROOT = Path(__file__).resolve().parents[1]


def loaded(argv: list[str], environ: dict[str, str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    config = load(parser.parse_args(argv), environ or {})
    return {name: (config[name], config.sources[name]) for name in config.values}


def test_defaults_are_designs_table() -> None:
    values = loaded([])
    assert values["host"] == ("127.0.0.1", "default")
    assert values["port"] == (None, "default")  # 8080, or 8443 with TLS
    assert values["rate_limit"] == (10.0, "default")
    assert values["rate_burst"] == (20, "default")
    assert values["ping_interval"] == (20.0, "default")
    assert values["close_timeout"] == (5.0, "default")
    assert values["write_limit"] == (1 << 20, "default")
    assert values["history_on_join"] == (50, "default")
    assert values["max_head_size"] == (8192, "default")
    assert values["max_headers"] == (64, "default")
    assert values["handshake_timeout"] == (10.0, "default")


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    config = tmp_path / "chatd.toml"
    config.write_text(
        'port = 7000\nrate-limit = 3\nauth = "required"\nallow_origin = ["https://f"]\n'
    )
    environ = {"CHATD_PORT": "7100", "CHATD_RATE_LIMIT": "4", "CHATD_CONFIG": str(config)}
    values = loaded(["--port", "7200"], environ)
    assert values["port"] == (7200, "flag")
    assert values["rate_limit"] == (4.0, "environment")
    assert values["auth"] == ("required", f"file {config}")
    assert values["allow_origin"] == (("https://f",), f"file {config}")
    assert values["db"] == ("var/chatd.sqlite3", "default")


def test_lists_and_booleans_from_every_source() -> None:
    values = loaded(
        ["--allow-origin", "https://a,https://b", "--allow-origin", "https://c", "--no-tls"],
        {"CHATD_TLS": "yes", "CHATD_REGISTRATION": "on"},
    )
    assert values["allow_origin"] == (("https://a", "https://b", "https://c"), "flag")
    assert values["tls"] == (False, "flag")  # --no-tls beats CHATD_TLS=yes
    assert values["registration"] == (True, "environment")


@pytest.mark.parametrize(
    ("argv", "environ", "file", "message"),
    [
        (["--port", "http"], {}, None, "port (flag --port): an integer"),
        (["--port", "70000"], {}, None, "port (flag --port): at most 65535"),
        ([], {"CHATD_RATE_LIMIT": "fast"}, None, "rate_limit (environment CHATD_RATE_LIMIT)"),
        ([], {"CHATD_RATE_LIMIT": "nan"}, None, "a finite number"),
        ([], {"CHATD_TLS": "maybe"}, None, "tls (environment CHATD_TLS): true or false"),
        (["--auth", "sometimes"], {}, None, "auth (flag --auth): one of open, required"),
        (["--rate-burst", "0"], {}, None, "rate_burst (flag --rate-burst): at least 1"),
        ([], {}, "port = true\n", "port (file"),
        ([], {}, "allow_origin = [1]\n", "a list of strings"),
        ([], {}, "colour = 'blue'\n", "unknown setting 'colour'"),
        ([], {}, "port = = 1\n", "is not TOML"),
    ],
)
def test_bad_values_name_the_setting_and_the_source(
    tmp_path: Path, argv: list[str], environ: dict[str, str], file: str | None, message: str
) -> None:
    if file is not None:
        path = tmp_path / "chatd.toml"
        path.write_text(file)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loaded(argv, environ)


def test_every_option_has_a_flag_an_env_name_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    text = parser.format_help()
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
        assert option.help


def run_chatd(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_check_config_prints_values_and_sources_with_secrets_hidden(tmp_path: Path) -> None:
    config = tmp_path / "chatd.toml"
    config.write_text('secret = "0123456789abcdef0123456789abcdef"\nrate_limit = 2\n')
    done = run_chatd("check-config", "--config", str(config), env={"CHATD_PORT": "9100"})
    assert done.returncode == 0, done.stderr
    lines = {line.split("=", 1)[0].strip(): line for line in done.stdout.splitlines()}
    assert lines["port"].endswith("= 9100  (environment)")
    assert lines["rate_limit"].endswith(f"= 2.0  (file {config})")
    assert "0123456789abcdef" not in done.stdout
    assert lines["secret"].endswith(f"= ********  (file {config})")


def test_check_config_hides_the_password_of_a_redis_url() -> None:
    done = run_chatd("check-config", env={"CHATD_BUS": "redis://chatd:hunter2@127.0.0.1:6379/0"})
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout
    assert "bus" in done.stdout and "redis://chatd:***@127.0.0.1:6379/0  (environment)" in (
        done.stdout
    )
    done = run_chatd("check-config", "--bus", "postgres://127.0.0.1/chat")
    assert done.returncode == 2
    assert "bus must be 'local' or a redis:// URL" in done.stderr


def test_a_bad_value_stops_the_start_with_its_name() -> None:
    done = run_chatd("--max-connections", "-1", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "bad setting: max_connections (flag --max-connections): at least 0, not -1"
    )
    done = run_chatd("check-config", "--allow-origin", "not-an-origin")
    assert done.returncode == 2
    assert "not an origin" in done.stderr


def test_json_log_lines() -> None:
    record = logging.LogRecord("chatd", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "chatd"
    assert entry["message"] == "hello there"
    assert entry["time"].endswith("Z")


def test_journal_lines_carry_their_priority() -> None:
    formatter = JournalFormatter()
    warning = logging.LogRecord("chatd", logging.WARNING, __file__, 1, "slow", (), None)
    assert formatter.format(warning) == "<4>WARNING chatd: slow"
    info = logging.LogRecord("chatd", logging.INFO, __file__, 1, "a\nb", (), None)
    assert formatter.format(info) == "<6>INFO chatd: a\n<6>b"
