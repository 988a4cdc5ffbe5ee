"""The record on the NIC and the pure drain/restore planners, table by table."""

from __future__ import annotations

import pytest

from drainer.decide.nicrecord import (
    MAC,
    MAX_TAGS,
    AdminRecord,
    NicView,
    Ref,
    Seal,
    decode,
    encode,
    plan_admin,
    plan_drain,
    plan_restore,
    seal,
    verify,
    with_records,
)

SUB = "8d10da13-8125-4ba9-a717-bf7490507b3d"
NIC = f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Network/networkInterfaces/web-0-nic"


def pool(name: str, lb: str = "lb-web", group: str = "rg-app", sub: str = SUB) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Network/loadBalancers/{lb}"
        f"/backendAddressPools/{name}"
    )


WEB = Ref("ipconfig1", "lb-pool", pool("web"))
API = Ref("ipconfig1", "lb-pool", pool("api"))
OTHER_RG = Ref("ipconfig2", "lb-pool", pool("web", group="rg-network"))
GW = Ref(
    "ipconfig1",
    "appgw-pool",
    f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Network/applicationGateways/gw"
    "/backendAddressPools/be",
)


def test_encode_then_decode_gives_back_every_reference() -> None:
    tags = encode([WEB, API, OTHER_RG, GW], [AdminRecord(pool("ip"), "addr-1", "None")], SUB)
    assert tags is not None
    assert tags["drainer:lb:ipconfig2:0"] == "rg-network/lb-web/web"
    records = decode(tags, SUB)
    assert {r.key for r in records.refs} == {r.key for r in (WEB, API, OTHER_RG, GW)}
    assert records.admin == [AdminRecord(pool("ip"), "addr-1", "None")]
    assert records.unreadable == {}


@pytest.mark.parametrize(
    ("refs", "why"),
    [
        (
            [Ref("ipconfig1", "lb-pool", pool("web", sub="00000000-0000-0000-0000-000000000000"))],
            "subscription",
        ),
        ([Ref("ip?config", "lb-pool", pool("web"))], "forbidden character in the tag name"),
        ([Ref("ipconfig1", "lb-pool", pool("p" * 80, lb="l" * 80, group="g" * 97))], "value over 256"),
        ([Ref("ipconfig1", "lb-pool", "/not/a/pool/id")], "not a pool id"),
    ],
)
def test_what_cannot_be_encoded_is_refused_whole(refs: list[Ref], why: str) -> None:
    assert encode(refs, [], SUB) is None, why


def test_the_longest_legal_names_fit() -> None:
    longest = Ref("i" * 80, "lb-pool", pool("p" * 80, lb="l" * 80, group="g" * 90))
    tags = encode([longest], [], SUB)
    assert tags is not None and max(len(v) for v in tags.values()) <= 256


def test_foreign_tags_are_kept_and_the_limit_of_50_is_respected() -> None:
    foreign = {f"team{i}": "x" for i in range(45)}
    assert with_records(foreign, [WEB, API], [], SUB, "out") == {
        **foreign,
        "drainer:lb:ipconfig1:0": "rg-app/lb-web/api",
        "drainer:lb:ipconfig1:1": "rg-app/lb-web/web",
        "drainer:out": "out",
    }  # 45 + 2 records + the summary, and one slot for the MAC
    full = {f"team{i}": "x" for i in range(MAX_TAGS - 3)}
    fits = with_records(full, [WEB, API], [], SUB, "out")
    assert fits is not None and "drainer:out" not in fits  # 47 + 2 records + MAC: the summary gives way
    assert len(seal(fits, KEY, BINDING)) == MAX_TAGS
    crowded = {f"team{i}": "x" for i in range(MAX_TAGS - 2)}
    assert with_records(crowded, [WEB, API], [], SUB, "out") is None  # 48 + 2 + MAC > 50


KEY = bytes(range(32))
BINDING = Seal(NIC, "vm-id-0", 3, "2026-11-30T03:40:00Z")


def _sealed() -> dict[str, str]:
    tags = with_records({"owner": "me"}, [WEB, API], [], SUB, "out: Reboot")
    assert tags is not None
    return seal(tags, KEY, BINDING)


def test_a_sealed_record_verifies_for_its_open_drain() -> None:
    tags = _sealed()
    version, drain, since, mac = tags[MAC].split(" ")
    assert (version, drain, since, len(mac)) == ("v1", "3", "2026-11-30T03:40:00Z", 43)
    verdict = verify(tags, KEY, NIC.upper(), "VM-ID-0", (3, "2026-11-30T03:40:00Z"))
    assert verdict.reason == "" and verdict.untrusted == {}
    assert verdict.trusted == {k: v for k, v in tags.items() if k != MAC}
    assert {r.key for r in decode(verdict.trusted, SUB).refs} == {WEB.key, API.key}


def _changed(change: str) -> tuple[dict[str, str], bytes, str, str, tuple[int, str] | None]:
    """A sealed record, then one thing changed; returns verify's arguments."""
    tags, key, nic, vm = _sealed(), KEY, NIC, "vm-id-0"
    drain: tuple[int, str] | None = (3, "2026-11-30T03:40:00Z")
    if change == "a pool added":
        tags["drainer:lb:ipconfig1:2"] = "rg-app/lb-web/other"
    elif change == "a pool removed":
        del tags["drainer:lb:ipconfig1:0"]
    elif change == "the summary changed":
        tags["drainer:out"] = "out: nothing to see"
    elif change == "a name's case changed":
        tags["drainer:LB:ipconfig1:0"] = tags.pop("drainer:lb:ipconfig1:0")
    elif change == "another key":
        key = bytes(32)
    elif change == "another NIC":
        nic = NIC + "2"
    elif change == "another VM":
        vm = "vm-id-1"
    elif change == "the drain ended":
        drain = None
    elif change == "a later drain is open":
        drain = (4, "2026-12-01T00:00:00Z")
    elif change == "no MAC":
        del tags[MAC]
    elif change == "a garbled MAC":
        tags[MAC] = "v1 three"
    return tags, key, nic, vm, drain


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("a pool added", "mac-mismatch"),
        ("a pool removed", "mac-mismatch"),
        ("the summary changed", "mac-mismatch"),
        ("a name's case changed", ""),  # Azure's tag names are case-insensitive
        ("another key", "mac-mismatch"),
        ("another NIC", "mac-mismatch"),
        ("another VM", "mac-mismatch"),
        ("the drain ended", "ended-drain"),
        ("a later drain is open", "ended-drain"),
        ("no MAC", "no-mac"),
        ("a garbled MAC", "malformed"),
    ],
)
def test_what_makes_a_record_unverifiable(change: str, reason: str) -> None:
    tags, key, nic, vm, drain = _changed(change)
    verdict = verify(tags, key, nic, vm, drain)
    assert verdict.reason == reason, verdict.detail
    if reason:
        assert decode(verdict.trusted, SUB).refs == [] and verdict.trusted == {"owner": "me"}
        assert MAC not in verdict.trusted and set(verdict.untrusted) >= {"drainer:lb:ipconfig1:1"}


def test_no_key_verifies_nothing_and_nothing_to_verify_needs_no_key() -> None:
    assert verify(_sealed(), None, NIC, "vm-id-0", (3, "2026-11-30T03:40:00Z")).reason == "no-key"
    assert verify({"owner": "me"}, None, NIC, "vm-id-0", None) == (({"owner": "me"}), {}, "", "")


def test_sealing_nothing_removes_the_mac() -> None:
    assert seal({"owner": "me", MAC: "v1 1 x y"}, KEY, BINDING) == {"owner": "me"}


def test_unreadable_drainer_tags_are_kept_untouched() -> None:
    tags = {"drainer:future:thing": "a/b/c", "drainer:lb:ipconfig1:0": "not-a-pool", "owner": "me"}
    records = decode(tags, SUB)
    assert records.refs == [] and set(records.unreadable) == {
        "drainer:future:thing",
        "drainer:lb:ipconfig1:0",
    }
    assert with_records(tags, [], [], SUB, "") == tags


# plan_drain: (refs on the NIC, tags before) -> (refs after, records after, removed, on the NIC)
DRAIN_TABLE = [
    ("in two pools", (WEB, API), {}, (), {WEB.key, API.key}, 2, True),
    (
        "already out, record present",
        (),
        {"drainer:lb:ipconfig1:0": "rg-app/lb-web/web"},
        (),
        {WEB.key},
        0,
        True,
    ),
    (
        "half out after a crash",
        (API,),
        {"drainer:lb:ipconfig1:0": "rg-app/lb-web/web"},
        (),
        {WEB.key, API.key},
        1,
        True,
    ),
    ("app gateway kept (not drained)", (WEB, GW), {}, (GW,), {WEB.key}, 1, True),
    ("no room: record kept locally", (WEB,), {f"t{i}": "x" for i in range(50)}, (), set(), 1, False),
]


@pytest.mark.parametrize("row", DRAIN_TABLE, ids=[c[0] for c in DRAIN_TABLE])
def test_plan_drain(row: tuple[object, ...]) -> None:
    _, refs, tags, after, recorded, removed, on_nic = row
    assert isinstance(refs, tuple) and isinstance(tags, dict)
    plan = plan_drain(NicView(NIC, tags, refs), ["lb-pool"], "out: Reboot")
    assert plan.refs == after
    assert len(plan.removed) == removed
    assert plan.on_nic is on_nic
    if on_nic and removed:
        assert {r.key for r in decode(plan.tags, SUB).refs} == recorded
        assert plan.tags["drainer:out"] == "out: Reboot"
    if not on_nic:
        assert plan.tags == tags  # nothing of ours written


RECORDED = {
    "drainer:out": "out",
    "drainer:lb:ipconfig1:0": "rg-app/lb-web/api",
    "drainer:lb:ipconfig1:1": "rg-app/lb-web/web",
}


# plan_restore: (refs now, tags, pool states) -> (refs after, records kept, restored, dropped)
RESTORE_TABLE = [
    ("both back", (), RECORDED, {"api": "present", "web": "present"}, {API.key, WEB.key}, 0, 2, 0),
    ("one already back", (WEB,), RECORDED, {"api": "present", "web": "present"}, {API.key, WEB.key}, 0, 1, 0),
    ("one 404, not confirmed", (), RECORDED, {"api": "absent", "web": "present"}, {WEB.key}, 1, 1, 0),
    ("one confirmed gone", (), RECORDED, {"api": "gone", "web": "present"}, {WEB.key}, 0, 1, 1),
    ("nothing recorded", (WEB,), {"owner": "me"}, {}, {WEB.key}, 0, 0, 0),
]


@pytest.mark.parametrize("row", RESTORE_TABLE, ids=[c[0] for c in RESTORE_TABLE])
def test_plan_restore(row: tuple[object, ...]) -> None:
    _, refs, tags, states, after, kept, restored, dropped = row
    assert isinstance(refs, tuple) and isinstance(tags, dict) and isinstance(states, dict)
    plan = plan_restore(NicView(NIC, tags, refs), [], lambda r: states[r.pool_id.rsplit("/", 1)[-1]], "wait")
    assert {r.key for r in plan.refs} == after
    assert (len(plan.kept), len(plan.restored), len(plan.dropped)) == (kept, restored, dropped)
    left = decode(plan.tags, SUB).refs
    assert len(left) == kept  # the record of what is not back yet stays on the NIC, nothing else
    assert ("drainer:out" in plan.tags) is bool(kept)
    assert plan.tags.get("owner") == tags.get("owner")


def test_plan_restore_takes_local_records_too() -> None:
    plan = plan_restore(NicView(NIC, {}, ()), [WEB], lambda r: "present", "")
    assert plan.restored == (WEB,) and plan.tags == {}


def test_plan_admin_keeps_the_pool_records() -> None:
    view = NicView(NIC, RECORDED, ())
    plan = plan_admin(view, [AdminRecord(pool("ip"), "addr-1", "Up")], "down")
    assert plan is not None
    records = decode(plan.tags, SUB)
    assert len(records.refs) == 2 and records.admin == [AdminRecord(pool("ip"), "addr-1", "Up")]
    cleared = plan_admin(NicView(NIC, plan.tags, ()), [], "")
    assert cleared is not None and len(decode(cleared.tags, SUB).refs) == 2
