"""Claim 1/3/5 break: a Tag Contributor's garbled ``drainer:mac`` tag is not "reported and never acted
on": every run that reads the NIC's record dies with a traceback (exit 70).

* "v1 ² <since> <mac>": ``"²".isdigit()`` is True, ``int("²")`` raises ValueError;
* "v1 1 <since> é...": ``hmac.compare_digest`` raises TypeError on a non-ASCII str.

Consequences, through the CLI against the emulator:
- drained by a maintenance, state dir intact: the restore crashes on every run, the VM stays out of
  all its pools although the local ledger knows exactly what to put back (claim 3);
- in rotation (a key exists from an earlier drain): the next maintenance's drain crashes on every run,
  the VM is never taken out of rotation.

Run: .venv/bin/python -m pytest attacks/test_mac_tag_crashes_drainer.py -n0 -q
"""

from __future__ import annotations

import pytest

from tests.attacks3.helpers import LATER, TagContributor, pools_of
from tests.test_truth import API_POOL, WEB_POOL, ok

GARBLED = {
    "superscript-digit": "v1 \u00b2 2026-01-01T00:00:00Z " + "A" * 43,
    "non-ascii-mac": "v1 1 2026-01-01T00:00:00Z \u00e9" + "A" * 42,
}


@pytest.mark.parametrize("mac", list(GARBLED))
def test_garbled_mac_keeps_a_drained_vm_out_forever(tagged, two_pools, emulator, mac):
    tagger = TagContributor(emulator)
    event_id = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())  # drained; the state dir keeps the local copy
    assert tagger.patch("web-0-nic", "Merge", {"drainer:mac": GARBLED[mac]}).status_code == 200
    two_pools.remove(event_id)  # maintenance over
    for _ in range(3):
        done = tagged.check(**LATER)
        # expected: exit 0, a warning "cannot be verified", the local copy restores both pools
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert pools_of(two_pools, "web-0-nic") == sorted([WEB_POOL, API_POOL])


@pytest.mark.parametrize("mac", list(GARBLED))
def test_garbled_mac_stops_the_next_drain(tagged, two_pools, emulator, mac):
    tagger = TagContributor(emulator)
    first = two_pools.schedule("Reboot", ["web-0"])
    ok(tagged.check())
    two_pools.remove(first)
    ok(tagged.check())  # one ordinary cycle: the record key exists now
    assert (
        tagger.patch(
            "web-0-nic",
            "Merge",
            {"drainer:lb:ipconfig1:0": "rg-drainer/lb-web/web-pool", "drainer:mac": GARBLED[mac]},
        ).status_code
        == 200
    )
    two_pools.schedule("Reboot", ["web-0"])
    done = tagged.check()
    # expected: the forged record reported, the VM drained
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert pools_of(two_pools, "web-0-nic") == []
