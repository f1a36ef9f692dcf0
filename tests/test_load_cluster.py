"""The cluster mode of bench/load.py, and the load balancer examples of docs/scaling.md.

The load test starts a real ``redis-server`` and two chatd nodes (bench/cluster.py), spreads
a few chat clients over them and checks that the measurement is consistent: every
published message reached every client exactly once, whichever node it was on, every
node's replica holds them all, and the latency figures are there. It never checks how
fast anything is: timing belongs in bench/. Without redis-server it skips, except under
``CI=true``, where it fails (``.ci/run`` installs Debian's redis-server).

The configuration tests run ``haproxy -c`` and ``nginx -t`` on the shipped examples. They
skip, saying so, where the program is not installed, and fail instead under ``CI=true``
when ``.ci/run`` is meant to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import redis_server_path
from bench.load import REPO_ROOT, ClusterSettings, main, measure_cluster
from tls.localca import issue_leaf

CLIENTS = 6


def _require(program: str | None, package: str, *, in_ci_run: bool = True) -> None:
    """Skip when ``program`` is missing; under CI=true fail instead if CI installs it."""
    if program is not None:
        return
    message = f"{package} is not installed (Debian package {package})"
    if os.environ.get("CI") == "true" and in_ci_run:
        pytest.fail(f"{message}; .ci/run should have installed it")
    pytest.skip(message)


def _installed_by_ci(package: str) -> bool:
    """Whether ``.ci/run`` names ``package`` among the Debian packages it installs."""
    ci_run = REPO_ROOT / ".ci" / "run"
    return ci_run.exists() and f"need+=({package})" in ci_run.read_text()


def test_a_missing_program_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="should have installed"):
        _require(None, "some-package")
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        _require(None, "some-package", in_ci_run=False)  # CI does not install it
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        _require(None, "some-package")
    _require("/usr/bin/true", "some-package")  # installed: nothing happens


# --- the cluster load mode ------------------------------------------------------------------


def test_cluster_mode_delivers_every_message_to_every_client(tmp_path: Path) -> None:
    _require(redis_server_path(), "redis-server")
    settings = ClusterSettings(
        nodes=(2,),
        baseline=False,
        clients=CLIENTS,
        senders=3,
        rate=30.0,
        in_flight=4,
        duration=1.0,
        warmup=0.3,
        noise_retries=0,  # a pass/fail test: a noisy run is as good as a quiet one
    )
    lines: list[str] = []
    output = tmp_path / "cluster.json"
    report = measure_cluster(settings, output=output, log=lines.append)

    assert report["failed"] == 0, [run.get("error") for run in report["runs"]]
    assert json.loads(output.read_text())["summary"] == report["summary"]
    runs = {run["mode"]: run for run in report["runs"]}
    assert sorted(runs) == ["max", "rate"]
    for mode, run in runs.items():
        assert (run["setup"], run["bus"], run["nodes"]) == ("redis-2", "redis", 2)
        _assert_consistent(run["result"], run["node_status"], mode)
    summary = report["summary"]["redis-2"]
    assert summary["rate"]["counted"] == summary["max"]["counted"] == 1
    assert summary["rate"]["latency_p99_ms"] is not None
    assert any("\n| redis-2 |" in line for line in lines)  # the table was printed


def _assert_consistent(result: dict[str, Any], nodes: list[dict[str, Any]], mode: str) -> None:
    # Two nodes, clients spread over both, CPU read for both nodes and Redis.
    assert len(result["urls"]) == len(set(result["urls"])) == 2
    assert len(result["server_pids"]) == len(result["server_cpu_percents"]) == 3
    # Every published message reached every client once, on either node.
    published = result["published_total"]
    assert published > 0
    assert result["lost"] == 0
    assert result["deliveries_total"] == published * CLIENTS
    assert result["received_per_client_min"] == result["received_per_client_max"] == published
    # Each node's replica holds every message, and each knows the other.
    for status in nodes:
        assert status["stored_messages"] == published, nodes
        assert status["nodes"] == 2
        assert status["bus_up"] is True
    # The measured window counts deliveries as they arrive within it, so it is off from
    # published x clients by the messages under way at its two edges: at most the
    # in-flight bound at full speed, a few at 30 messages/s (more on a loaded machine).
    assert result["published"] > 0
    under_way = 5 if mode == "rate" else int(result["in_flight"])
    assert abs(result["deliveries"] - result["published"] * CLIENTS) <= 2 * under_way * CLIENTS
    # Latency figures are there and ordered.
    assert result["latency_samples"] > 0
    if mode == "rate":
        assert result["latency_samples"] == result["deliveries"]
    p50, p90, p99, top = (
        result["latency_p50_ms"],
        result["latency_p90_ms"],
        result["latency_p99_ms"],
        result["latency_max_ms"],
    )
    assert None not in (p50, p90, p99, top)
    assert 0 < p50 <= p90 <= p99 <= top


def test_cluster_command_refuses_bad_node_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "--nodes", "two"]) == 1
    assert "--nodes takes counts" in capsys.readouterr().err


# --- the load balancer examples ----------------------------------------------------------------


def _installed(program: str) -> str | None:
    return shutil.which(program) or next(
        (path for path in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if Path(path).exists()),
        None,
    )


def _with_test_certificate(example: Path, directory: Path, replacements: dict[str, str]) -> Path:
    """A copy of ``example`` in ``directory`` with its certificate paths replaced by
    ``replacements`` (the checkers load the certificate files).
    """
    text = example.read_text()
    for placeholder, path in replacements.items():
        assert placeholder in text, f"{placeholder} is no longer in {example.name}"
        text = text.replace(placeholder, path)
    copy = directory / example.name
    copy.write_text(text)
    return copy


def test_haproxy_accepts_the_example_configuration(tmp_path: Path) -> None:
    haproxy = _installed("haproxy")
    _require(haproxy, "haproxy", in_ci_run=_installed_by_ci("haproxy"))
    assert haproxy is not None
    files = issue_leaf(tmp_path / "tls", ["chat.example.org"])
    # HAProxy takes one PEM file: the certificate chain, then its key.
    bundle = tmp_path / "chat.pem"
    bundle.write_bytes(files.certfile.read_bytes() + files.keyfile.read_bytes())
    config = _with_test_certificate(
        REPO_ROOT / "contrib" / "haproxy" / "chatd.cfg",
        tmp_path,
        {"/etc/haproxy/certs/chat.example.org.pem": str(bundle)},
    )
    completed = subprocess.run(
        [haproxy, "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_nginx_accepts_the_example_configuration(tmp_path: Path) -> None:
    nginx = _installed("nginx")
    _require(nginx, "nginx", in_ci_run=_installed_by_ci("nginx"))
    assert nginx is not None
    files = issue_leaf(tmp_path / "tls", ["chat.example.org"])
    example = _with_test_certificate(
        REPO_ROOT / "contrib" / "nginx" / "chatd-cluster.conf",
        tmp_path,
        {
            "/etc/letsencrypt/live/chat.example.org/fullchain.pem": str(files.certfile),
            "/etc/letsencrypt/live/chat.example.org/privkey.pem": str(files.keyfile),
        },
    )
    # The example is an http-context file (/etc/nginx/conf.d/): wrap it in a minimal
    # main configuration whose pid file and logs stay in the temporary directory.
    main_conf = tmp_path / "nginx.conf"
    main_conf.write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"    access_log {tmp_path}/access.log;\n"
        f"    include {example};\n"
        "}\n"
    )
    completed = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main_conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
