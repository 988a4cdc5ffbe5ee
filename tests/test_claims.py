"""The fleet's claims and the floor rule, pure (drainer/decide/claims.py)."""

from __future__ import annotations

import pytest

from drainer.decide.claims import PREFIX, Claim, admit, decode, encode, key, with_claim, without_claim

POOL = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/p"
OTHER_POOL = POOL.replace("/p", "/q")
NICS = [
    f"/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkInterfaces/n{i}" for i in range(6)
]
NOW = 1_800_000_000


def claim(vm: str, members: list[str], pools: tuple[str, ...] = (POOL,), expires: int = NOW + 600) -> Claim:
    return Claim(vm, expires, frozenset(key(p) for p in pools), frozenset(key(m) for m in members))


def test_a_claim_round_trips_through_its_tag() -> None:
    original = claim("web-1", NICS[:2])._replace(forced=True)
    name, value = encode(original)
    assert name == PREFIX + "web-1"
    assert len(value) <= 256
    (back,), unreadable = decode({name: value, "drainer:out": "x", "owner": "team"})
    assert back == original
    assert unreadable == []


def test_a_claim_that_does_not_fit_a_tag_is_refused() -> None:
    many = [f"{NICS[0]}{i}" for i in range(30)]
    with pytest.raises(ValueError, match="does not fit"):
        encode(claim("web-1", many))


@pytest.mark.parametrize("value", ["", "abc;;;", "1;;", "-5;;a;b", "1;;a;b;c", "9" * 300])
def test_unreadable_claims_are_named_not_trusted(value: str) -> None:
    claims, unreadable = decode({PREFIX + "web-9": value})
    assert claims == [] or value == "9" * 300
    assert unreadable == [PREFIX + "web-9"] or value == "9" * 300


@pytest.mark.parametrize(
    ("others", "min_in_service", "max_unavailable", "ok"),
    [
        # five members: me + four others in service
        ([], 1, 0, True),
        ([claim("b", [NICS[1]]), claim("c", [NICS[2]]), claim("d", [NICS[3]])], 1, 0, True),
        (
            [claim("b", [NICS[1]]), claim("c", [NICS[2]]), claim("d", [NICS[3]]), claim("e", [NICS[4]])],
            1,
            0,
            False,
        ),
        ([claim("b", [NICS[1]]), claim("c", [NICS[2]])], 3, 0, False),
        ([claim("b", [NICS[1]])], 0, 1, False),
        ([claim("b", [NICS[1]])], 0, 2, True),
        # expired claims, claims on another pool and this VM's own claim do not count
        ([claim("b", [NICS[1]], expires=NOW), claim("c", [NICS[2]], expires=NOW - 5)], 3, 1, True),
        ([claim("b", [NICS[1]], pools=(OTHER_POOL,))], 3, 1, True),
        ([claim("a", [NICS[0]])], 3, 1, True),
        # a claimant already out of the pool (not among the members) is not subtracted twice
        ([claim("f", [NICS[5]])], 4, 0, True),
    ],
)
def test_the_floor_rule(others: list[Claim], min_in_service: int, max_unavailable: int, ok: bool) -> None:
    pools = {POOL: set(NICS[1:5])}
    verdict = admit("a", pools, others, NOW, min_in_service=min_in_service, max_unavailable=max_unavailable)
    assert verdict.ok is ok
    assert (verdict.reason == "") is ok


def test_writing_a_claim_drops_expired_ones_and_keeps_other_tags() -> None:
    name_b, value_b = encode(claim("b", [NICS[1]], expires=NOW - 1))
    name_c, value_c = encode(claim("c", [NICS[2]]))
    tags = {name_b: value_b, name_c: value_c, "owner": "team", PREFIX + "junk": "???"}
    written = with_claim(tags, claim("a", [NICS[0]]), NOW)
    assert set(written) == {name_c, "owner", PREFIX + "junk", PREFIX + "a"}
    assert without_claim(written, "A", NOW) == {name_c: value_c, "owner": "team", PREFIX + "junk": "???"}
    assert without_claim(tags, "a", NOW) is None
