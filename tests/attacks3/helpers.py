"""Shared bits for the attacks: a Tag Contributor (only Microsoft.Resources/tags/* on the NIC)."""

from __future__ import annotations

import json
from typing import Any

import requests

from drainer.emulator.server import RunningEmulator
from tests.conftest import Agent, log_records
from tests.test_truth import API_POOL, CONFIG, RG, WEB_POOL, drainer_tags, pools_of  # noqa: F401

LATER = {"TEST_CLOCK_OFFSET": "4000"}  # a reconcile is due
OTHER_POOL = f"{RG}/loadBalancers/lb-other/backendAddressPools/other-pool"


class TagContributor:
    def __init__(self, emulator: RunningEmulator, as_vm: str = "web-2") -> None:
        self.base = emulator.url
        answer = requests.get(
            f"{emulator.vm_url(as_vm)}/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", "resource": emulator.url},
            headers={"Metadata": "true"},
            timeout=5,
        ).json()
        self.headers = {"Authorization": f"Bearer {answer['access_token']}"}

    def _url(self, nic: str) -> str:
        return (
            f"{self.base}{RG}/networkInterfaces/{nic}/providers/Microsoft.Resources/tags/default"
            "?api-version=2021-04-01"
        )

    def read(self, nic: str) -> dict[str, str]:
        answer = requests.get(self._url(nic), headers=self.headers, timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["properties"]["tags"]

    def patch(self, nic: str, operation: str, tags: dict[str, str]) -> requests.Response:
        body = {"operation": operation, "properties": {"tags": tags}}
        return requests.patch(self._url(nic), json=body, headers=self.headers, timeout=5)

    def put(self, nic: str, tags: dict[str, str]) -> requests.Response:
        return requests.put(
            self._url(nic), json={"properties": {"tags": tags}}, headers=self.headers, timeout=5
        )

    def raw(self, nic: str, method: str, body: bytes) -> requests.Response:
        return requests.request(
            method,
            self._url(nic),
            data=body,
            headers={**self.headers, "Content-Type": "application/json"},
            timeout=5,
        )


def warnings(stderr: str) -> list[dict[str, Any]]:
    return [r for r in log_records(stderr) if r.get("level") == "warning"]


def counter(agent: Agent) -> dict[str, Any]:
    return json.loads((agent.tmp / "state-record" / "record.drain").read_text())


def no_traceback(done: Any) -> None:
    assert "Traceback" not in done.stderr + done.stdout, (done.stdout + done.stderr)[-4000:]
    assert done.returncode != 70, (done.stdout + done.stderr)[-4000:]
