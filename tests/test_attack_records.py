"""Attacks on the record of a drain (issue 20), through the CLI against the emulator: each failed
before records were authenticated and either copy was enough, and passes now.

- a "Tag Contributor" (Azure's built-in role: ``Microsoft.Resources/tags/*`` and no access to the NIC
  itself) forges a ``drainer:lb`` tag naming a pool the VM was never in: the next reconcile must
  never put the NIC there, with the local state kept or lost;
- an old, genuine record written back after its drain ended (a replay) must not undo an operator's
  removal made after that drain;
- the NIC's tags replaced while drained (an operator, an IaC tool): the local copy still puts the VM
  back, for a maintenance event and for ``drainer drain`` + ``drainer restore``;
- a record made with another key (the VM reimaged): reported, never acted on, with the way back.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import requests

from drainer.emulator.control import EmulatorControl
from drainer.emulator.server import RunningEmulator
from tests.conftest import Agent, log_records
from tests.test_truth import API_POOL, CONFIG, RG, WEB_POOL, drainer_tags, ok, pools_of, tagged, two_pools

__all__ = ["tagged", "two_pools"]  # fixtures re-used from tests/test_truth.py

OTHER_POOL = f"{RG}/loadBalancers/lb-other/backendAddressPools/other-pool"
# A reconcile is due on every run (the runs of a test follow each other within a second).
LATER = {"TEST_CLOCK_OFFSET": "4000"}


class TagContributor:
    """Someone holding only Azure's built-in "Tag Contributor" role on the NIC: it may read and write
    the NIC's tags through the ``Microsoft.Resources/tags`` extension resource ("Tags - Update At
    Scope", PATCH ``{scope}/providers/Microsoft.Resources/tags/default`` with ``Merge``, ``Replace`` or
    ``Delete``: https://learn.microsoft.com/rest/api/resources/tags/update-at-scope), nothing else of
    it. Its own identity: web-2's token."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.base = emulator.url
        answer = requests.get(
            f"{emulator.vm_url('web-2')}/metadata/identity/oauth2/token",
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
        tags: dict[str, str] = answer.json()["properties"]["tags"]
        return tags

    def patch(self, nic: str, operation: str, tags: dict[str, str]) -> None:
        body = {"operation": operation, "properties": {"tags": tags}}
        answer = requests.patch(self._url(nic), json=body, headers=self.headers, timeout=5)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def tagger(emulator: RunningEmulator) -> TagContributor:
    return TagContributor(emulator)


@pytest.fixture
def other_pool(two_pools: EmulatorControl) -> EmulatorControl:
    """lb-other/other-pool, holding web-1 and web-2: web-0 was never in it."""
    two_pools.add_load_balancer("lb-other", pools=["other-pool"])
    two_pools.join("web-1", "lb-other", "other-pool")
    two_pools.join("web-2", "lb-other", "other-pool")
    return two_pools


def warnings(stderr: str) -> list[dict[str, Any]]:
    return [r for r in log_records(stderr) if r.get("level") == "warning"]


def problems(agent: Agent) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = agent.status()["vm"]["record_problems"]
    return found


# -- a forged record never joins a pool ------------------------------------------------------------


@pytest.mark.parametrize("state", ["kept", "lost"])
def test_a_tag_contributor_cannot_put_the_nic_into_a_pool(
    tagged: Agent, other_pool: EmulatorControl, tagger: TagContributor, state: str
) -> None:
    """With no maintenance at all, a forged ``drainer:lb`` tag (and a forged summary and MAC) naming a
    pool the VM was never in: the next reconcile must not put the NIC there."""
    ok(tagged.check())  # an ordinary first run: the VM in its two pools, nothing to do
    if state == "lost":
        shutil.rmtree(tagged.state_dir)
    tagger.patch(
        "web-0-nic",
        "Merge",
        {
            "drainer:lb:ipconfig1:0": "rg-drainer/lb-other/other-pool",
            "drainer:out": "out: Reboot 1234 since 2026-01-01T00:00:00Z vm=web-0",
            "drainer:mac": "v1 1 2026-01-01T00:00:00Z " + "A" * 43,
        },
    )
    done = tagged.check(**LATER)
    ok(done)
    assert pools_of(other_pool, "web-0-nic") == sorted([WEB_POOL, API_POOL])  # not in other-pool
    said = [w for w in warnings(done.stderr) if "cannot be verified" in w["event"]]
    assert said and said[0]["nic"] == "web-0-nic", done.stderr[-2000:]
    assert "drainer:lb:ipconfig1:0=rg-drainer/lb-other/other-pool" in said[0]["tags"]
    found = problems(tagged)
    assert [p["kind"] for p in found] == ["unverified"] and found[0]["nic"].endswith("/web-0-nic")
    text = tagged.run("status").stdout
    assert "UNVERIFIED record on web-0-nic" in text and "never acted on" in text


def test_the_unverified_record_is_counted(
    tagged: Agent, other_pool: EmulatorControl, tagger: TagContributor
) -> None:
    textfile = tagged.tmp / "drainer.prom"
    tagged.config_text = CONFIG + f'\n[metrics]\nenabled = true\ntextfile = "{textfile}"\n'
    ok(tagged.check())
    tagger.patch("web-0-nic", "Merge", {"drainer:lb:ipconfig1:0": "rg-drainer/lb-other/other-pool"})
    ok(tagged.check(**LATER))
    assert 'drainer_unverified_records_total{reason="no-mac"} 1.0' in textfile.read_text()
    assert pools_of(other_pool, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_a_forged_record_is_not_laundered_by_the_next_drain(
    tagged: Agent, other_pool: EmulatorControl, tagger: TagContributor
) -> None:
    """A forged tag planted before a maintenance: drainer's own drain write must not sign it along
    with its own record, so the restore after the maintenance does not put the NIC into that pool."""
    tagger.patch("web-0-nic", "Merge", {"drainer:lb:ipconfig1:7": "rg-drainer/lb-other/other-pool"})
    event_id = other_pool.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    assert pools_of(other_pool, "web-0-nic") == []
    other_pool.remove(event_id)
    ok(tagged.check())
    assert pools_of(other_pool, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_a_replayed_record_does_not_undo_an_operators_removal(
    tagged: Agent, two_pools: EmulatorControl, tagger: TagContributor
) -> None:
    """The record of an ended drain, captured and written back later by a tag writer, must not put the
    NIC back into a pool an operator took it out of after that drain ended."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    captured = drainer_tags(two_pools, "web-0-nic")
    assert len(captured) >= 3
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    two_pools.leave("web-0", "lb-web", "api-pool")  # the operator's decision, after the maintenance
    tagger.patch("web-0-nic", "Merge", captured)
    ok(tagged.check(**LATER))
    assert pools_of(two_pools, "web-0-nic") == [WEB_POOL]
    assert [p["kind"] for p in problems(tagged)] == ["unverified"]


def test_a_genuine_record_is_still_restored_after_the_state_dir_is_lost(
    tagged: Agent, two_pools: EmulatorControl
) -> None:
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    shutil.rmtree(tagged.state_dir)
    two_pools.remove(event_id)
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert drainer_tags(two_pools, "web-0-nic") == {}
    assert not [w for w in warnings(done.stderr) if "cannot be verified" in w["event"]]


@pytest.mark.parametrize(("key", "why"), [("lost", "no record key"), ("replaced", "MAC does not match")])
def test_a_record_made_with_another_key_is_reported_and_never_acted_on(
    tagged: Agent, two_pools: EmulatorControl, key: str, why: str
) -> None:
    """The VM reimaged while drained: the state and the key are gone (or a new key made), the NIC's
    record was signed with the old key. drainer cannot tell it from a forgery: it says so, with the
    way back by hand."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    shutil.rmtree(tagged.state_dir)
    key_dir = tagged.tmp / "state-record"
    shutil.rmtree(key_dir)
    if key == "replaced":
        key_dir.mkdir(mode=0o700)
        (key_dir / "record.key").write_text("ab" * 32 + "\n")
        (key_dir / "record.key").chmod(0o600)
    two_pools.remove(event_id)
    done = tagged.check()
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == []
    said = [w for w in warnings(done.stderr) if "cannot be verified" in w["event"]]
    assert said and why in said[0]["reason"], done.stderr[-2000:]
    assert "az network nic ip-config address-pool add" in said[0]["by_hand"]
    assert (
        "--operation Delete --tags drainer:lb:ipconfig1:0 drainer:lb:ipconfig1:1 drainer:mac"
        in said[0]["by_hand"]
    )
    text = tagged.run("status").stdout
    assert "UNVERIFIED record on web-0-nic" in text and "by hand" in text


# -- either copy is enough ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["event", "manual"])
def test_tags_replaced_while_drained_do_not_lose_the_vm(
    tagged: Agent, two_pools: EmulatorControl, tagger: TagContributor, how: str
) -> None:
    """An operator (or an IaC tool) replaces the NIC's whole tag set while the VM is drained: the local
    copy of the open drain still puts the VM back into both pools, and the disagreement is reported."""
    if how == "event":
        event_id = two_pools.schedule("Reboot", ["web-0"])
        ok(tagged.check())
    else:
        ok(tagged.run("drain"))
    assert pools_of(two_pools, "web-0-nic") == []
    tagger.patch("web-0-nic", "Replace", {"owner": "iac"})
    if how == "event":
        two_pools.remove(event_id)
        done = tagged.check()
    else:
        done = tagged.run("restore")
    ok(done)
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])
    assert two_pools.nic("web-0-nic")["tags"] == {"owner": "iac"}
    said = [w for w in warnings(done.stderr) if "disagree" in w["event"]]
    assert said and said[0]["nic"] == "web-0-nic", done.stderr[-2000:]
    assert [p["kind"] for p in problems(tagged)] == ["disagree"]
    assert tagged.status()["vm"]["in_rotation"] is True


def test_the_local_copy_is_kept_while_the_nic_copy_is_gone(
    tagged: Agent, two_pools: EmulatorControl, tagger: TagContributor
) -> None:
    """The NIC's record deleted while drained and the event still listed: the local copy is not
    discarded by the reconciles in between."""
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    tagger.patch("web-0-nic", "Replace", {})
    ok(tagged.check(**LATER))  # a reconcile while the event still holds the VM out
    removed = tagged.status()["vm"]["removed"]
    assert sorted(r["target"] for r in removed) == sorted([WEB_POOL, API_POOL])
    two_pools.remove(event_id)
    ok(tagged.check())
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_the_record_format(tagged: Agent, two_pools: EmulatorControl) -> None:
    """One ``drainer:mac`` tag: version, drain number, when the drain began, a base64url HMAC-SHA256."""
    two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    mac = drainer_tags(two_pools, "web-0-nic")["drainer:mac"]
    version, drain, since, digest = mac.split(" ")
    assert (version, drain) == ("v1", "1") and since.endswith("Z") and len(digest) == 43
    key = tagged.tmp / "state-record" / "record.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert json.loads((key.parent / "record.drain").read_text())["drain"] == 1


# -- the key is checked like OpenSSH checks a private key ---------------------------------------------


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("key readable by others", "readable or writable by group or others (mode 0644)"),
        ("key dir writable by others", "world-writable"),
        ("key not a key", "not a record key"),
    ],
)
def test_a_key_others_could_read_or_replace_is_refused(
    tagged: Agent, two_pools: EmulatorControl, setup: str, why: str
) -> None:
    """Refused and named: the drain still goes ahead, its record kept locally (exit 1 says why), and
    the restore puts the VM back from that local copy."""
    key_dir = tagged.tmp / "state-record"
    key_dir.mkdir(mode=0o700)
    key = key_dir / "record.key"
    key.write_text(("zz" if setup == "key not a key" else "ab") * 32 + "\n")
    key.chmod(0o644 if setup == "key readable by others" else 0o600)
    if setup == "key dir writable by others":
        key_dir.chmod(0o777)
    event_id = two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    assert done.returncode == 1 and why in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert pools_of(two_pools, "web-0-nic") == []
    assert "drainer:mac" not in drainer_tags(two_pools, "web-0-nic")
    two_pools.remove(event_id)
    tagged.check()
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


def test_a_dry_run_makes_no_key_and_opens_no_drain(tagged: Agent, two_pools: EmulatorControl) -> None:
    two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.run("--dry-run", "check"))
    assert not (tagged.tmp / "state-record").exists()
    ok(tagged.check())
    counter = tagged.tmp / "state-record" / "record.drain"
    before = counter.read_bytes()
    ok(tagged.run("--dry-run", "restore"))
    assert counter.read_bytes() == before


def test_config_check_names_a_refused_key(tagged: Agent) -> None:
    key_dir = tagged.tmp / "state-record"
    key_dir.mkdir(mode=0o700)
    (key_dir / "record.key").write_text("ab" * 32 + "\n")
    (key_dir / "record.key").chmod(0o640)
    done = tagged.run("config", "check")
    assert done.returncode == 2, done.stderr
    assert f"drain.record_key {key_dir / 'record.key'}" in done.stderr and "mode 0640" in done.stderr
    (key_dir / "record.key").chmod(0o600)
    assert tagged.run("config", "check").returncode == 0
