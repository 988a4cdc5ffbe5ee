"""The demo from the README, ``python -m drainer``, and what reaches the logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from drainer.config import LoggingConfig
from drainer.io.log import REDACTED, configure, get_logger
from tests.conftest import ROOT


def test_demo_runs_from_the_cli_and_tells_the_story() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "drainer", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "VM in_rotation -> draining" in out
    assert "VM restoring -> in_rotation" in out
    assert "other-vm" in out
    assert "demo OK" in out


def test_python_dash_m_is_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "drainer", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("drainer 0.")


def test_secrets_never_reach_the_log() -> None:
    stream = io.StringIO()
    configure(LoggingConfig(format="json", level="debug"), stream=stream)
    log = get_logger()
    jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQ.c2lnbmF0dXJl"
    log.info("token fetched", access_token=jwt, client_secret="s3cr3t-value")
    log.warning("request failed", error=f"401 for Authorization: Bearer {jwt}")
    log.error("sas", url="https://acct.blob.core.windows.net/c/b?sv=2024&sig=AbCdEf%2Bg")
    text = stream.getvalue()
    for secret in (jwt, "s3cr3t-value", "AbCdEf%2Bg"):
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0]["access_token"] == REDACTED
    assert records[0]["client_secret"] == REDACTED
    assert REDACTED in records[1]["error"]
    assert records[2]["url"].endswith("sig=" + REDACTED) or REDACTED in records[2]["url"]


def test_level_filter_and_console_format() -> None:
    stream = io.StringIO()
    configure(LoggingConfig(format="console", level="warning"), stream=stream)
    log = get_logger()
    log.info("quiet")
    log.warning("loud", event_id="A")
    text = stream.getvalue()
    assert "quiet" not in text
    assert "loud" in text and "event_id" in text
    assert not text.lstrip().startswith("{")
