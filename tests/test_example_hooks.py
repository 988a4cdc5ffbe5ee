"""The example hooks in hooks/ do what their header says (the ones runnable here)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

HOOKS = ROOT / "hooks"
CONTRACT = {
    "DRAINER_PHASE": "post-drain",
    "DRAINER_VM_NAME": "web-0",
    "DRAINER_EVENT_ID": "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
    "DRAINER_EVENT_TYPE": "Reboot",
    "DRAINER_NOT_BEFORE": "2026-11-24T10:00:00Z",
    "DRAINER_DRY_RUN": "0",
}


def _run(script: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOOKS / script)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_log_syslog_calls_logger_with_the_contract(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "logger").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path / "args"}"\n')
    (fake / "logger").chmod(0o755)
    done = subprocess.run(
        [str(HOOKS / "log-syslog.sh")],
        env={"PATH": f"{fake}:/usr/bin:/bin", **CONTRACT},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:4] == ["-t", "drainer-hook", "-p", "daemon.notice"]
    assert "phase=post-drain vm=web-0 event=C7061BAC-AFDC-4513-B24B-AA5F13A16123 type=Reboot" in args[-1]


@pytest.fixture
def listener() -> Iterator[tuple[int, socket.socket]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1], server
    server.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_wait_connections_returns_at_once_without_connections(listener: tuple[int, socket.socket]) -> None:
    port, _ = listener
    started = time.monotonic()
    done = _run("wait-connections.sh", {"PORTS": str(port), "WAIT_SECONDS": "20"})
    assert done.returncode == 0
    assert "no established connections" in done.stdout
    assert time.monotonic() - started < 10


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_wait_connections_is_bounded(listener: tuple[int, socket.socket]) -> None:
    port, server = listener
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        done = _run("wait-connections.sh", {"PORTS": str(port), "WAIT_SECONDS": "2"})
    finally:
        client.close()
        accepted.close()
    assert done.returncode == 0
    assert "still 1 established connections" in done.stderr


def test_notify_webhook_posts_valid_json_even_with_hostile_fields(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url_file = tmp_path / "url"
        url_file.write_text(f"http://127.0.0.1:{server.server_address[1]}/hook\n")
        env = {**CONTRACT, "WEBHOOK_URL_FILE": str(url_file), "DRAINER_EVENT_ID": 'x"}, "evil": "$(id)\\'}
        done = _run("notify-webhook.sh", {**env, "no_proxy": "*"})
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    (body,) = received
    payload = json.loads(body)
    assert payload["text"].startswith("drainer: web-0 post-drain (Reboot x")
    assert "evil" in payload["text"] and '"' not in payload["text"]


def test_nginx_hook_in_dry_run_only_says_what_it_would_do(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    done = _run(
        "nginx-drain.sh",
        {
            **CONTRACT,
            "DRAINER_PHASE": "pre-drain",
            "DRAINER_DRY_RUN": "1",
            "NGINX_MAINTENANCE_FLAG": str(flag),
        },
    )
    assert done.returncode == 0, done.stderr
    assert "dry run: would create" in done.stdout
    assert not flag.exists()
