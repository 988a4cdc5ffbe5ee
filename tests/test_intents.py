"""The fleet's floor decided from the pools (drainer/decide/intents.py): the rule, the intent tag,
and the protocol run through every interleaving of two and three VMs' steps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest

from drainer.decide.intents import (
    TAG,
    Intent,
    Member,
    PoolView,
    Verdict,
    admit,
    any_floor,
    decode,
    encode,
    floor_for,
    intent_of,
    key,
    live,
    remember,
    seen_key,
    with_intent,
)

POOL = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/p"
NOW = 1_800_000_000


def test_an_intent_round_trips_through_its_tag() -> None:
    original = Intent("3f2a9c01", NOW + 900, frozenset({key(POOL), key(POOL + "2")}), forced=True)
    value = encode(original)
    assert len(value) <= 256
    assert decode(value) == original
    tags = with_intent({"owner": "team", "drainer:out": "x"}, value)
    assert intent_of(tags) == (value, original)
    assert with_intent(tags, None) == {"owner": "team", "drainer:out": "x"}
    assert intent_of({TAG.upper(): value}) == (value, original)  # tag names are case-insensitive


def test_an_intent_naming_too_many_pools_does_not_fit_a_tag() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(Intent("n", NOW, frozenset(key(f"{POOL}{i}") for i in range(40))))


@pytest.mark.parametrize(
    "value", ["", "x", "1;;1;;abc", "2;n;1;;abc", "1;n;soon;;abc", "1;n;-1;;abc", "1;n;5;;"]
)
def test_an_unreadable_intent_is_not_honoured(value: str) -> None:
    assert decode(value) is None


def test_an_intent_lives_at_most_claim_seconds_from_when_it_was_first_seen() -> None:
    forged = Intent("n", 4_102_444_800, frozenset({key(POOL)}))  # "expires" in 2100
    assert live(forged, NOW, NOW + 899, 900)
    assert not live(forged, NOW, NOW + 900, 900)
    early = forged._replace(expires=NOW + 60)  # its own expiry ends it sooner
    assert not live(early, NOW, NOW + 60, 900)


def test_first_seen_is_kept_per_value_and_forgotten_once_the_nic_changes() -> None:
    nic = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkInterfaces/web-1-nic"
    seen = remember({}, {nic: "v1"}, NOW)
    seen = remember(seen, {nic: "v1"}, NOW + 100)
    assert seen == {seen_key(nic, "v1"): NOW}  # not moved forward by a later read
    other = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/networkInterfaces/web-2-nic"
    seen = remember(seen, {other: "w"}, NOW + 200)
    assert seen[seen_key(nic, "v1")] == NOW  # a NIC not read now keeps its entry
    seen = remember(seen, {nic: "v2"}, NOW + 300)  # a new announcement: a new intent
    assert seen_key(nic, "v1") not in seen
    assert seen[seen_key(nic, "v2")] == NOW + 300
    assert seen_key(nic, "v2") not in remember(seen, {nic: None}, NOW + 400)


def test_floors_per_pool_by_id_load_balancer_and_pool_or_name() -> None:
    floors = {"*": 2, "p": 3, "lb/q": 4, POOL.replace("/p", "/r"): 5}
    assert floor_for(POOL, floors) == 3
    assert floor_for(POOL.replace("/p", "/q"), floors) == 4
    assert floor_for(POOL.replace("/p", "/r"), floors) == 5
    assert floor_for(POOL.replace("/p", "/s"), floors) == 2
    assert floor_for(POOL, {"p": 0}) == 0
    assert floor_for(POOL.replace("/p", "/s"), {"p": 0}) == 1  # a pool not named: the default
    assert not any_floor({"*": 0}, 0)
    assert any_floor({"*": 0, "p": 1}, 0)
    assert any_floor({"p": 0}, 0)  # the others keep the default, 1
    assert any_floor({"*": 0}, 1)


def _members(serving: int, leaving: int = 0, out: int = 0) -> tuple[Member, ...]:
    return (
        *(Member(f"s{i}", serving=True, leaving=False) for i in range(serving)),
        *(Member(f"l{i}", serving=True, leaving=True) for i in range(leaving)),
        *(Member(f"o{i}", serving=False, leaving=False, out_by_drainer=True) for i in range(out)),
    )


def test_a_member_out_of_the_pool_counts_as_out_whoever_took_it_out() -> None:
    # Two others in the pool, one of them announced leaving; one more out (a dead VM, an operator).
    view = PoolView(POOL, 1, (*_members(1, 1), Member("gone", serving=False, leaving=False)))
    assert admit([view], 0).ok
    assert not admit([view._replace(floor=2)], 0).ok


def test_held_by_intents_alone_is_a_conflict_held_by_the_pool_is_not() -> None:
    racing = admit([PoolView(POOL, 1, _members(0, 2))], 0)
    assert (racing.ok, racing.conflict) == (False, True)
    assert "min_in_service=1" in racing.reason
    assert "2 leaving now" in racing.reason
    short = admit([PoolView(POOL, 3, _members(1, 1))], 0)
    assert (short.ok, short.conflict) == (False, False)


def test_max_unavailable_counts_vms_out_by_drainer_and_leaving() -> None:
    two_nics = (Member("a", serving=False, leaving=True, out_by_drainer=True),) * 2
    assert admit([PoolView(POOL, 0, (*two_nics, *_members(3)))], 2).ok  # one VM out: a slot is left
    verdict = admit([PoolView(POOL, 0, (*two_nics, *_members(3, 1)))], 2)
    assert (verdict.ok, verdict.conflict) == (False, True)
    assert "max_unavailable=2" in verdict.reason
    assert not admit([PoolView(POOL, 0, _members(3, 0, 2))], 2).conflict


# -- the protocol, every interleaving --------------------------------------------------------------
#
# Shared: per agent, whether its NIC is in the pool, its intent (a nonce) and drainer's record.
# Each agent runs: write-intent, read-pool, read-peer-intents (one read per peer: they are separate
# GETs), decide, then remove-from-pool or withdraw; a withdrawal after a conflict retries once; a
# drained agent may later restore (in the pool again, record gone) and release its intent (a second
# write). An agent that stops at any point is a VM that died there: every reachable state is
# checked, so every crash point is too.


class Shared(NamedTuple):
    in_pool: tuple[bool, ...]
    intent: tuple[int, ...]  # 0: none, else the announcement's nonce
    record: tuple[bool, ...]


class Local(NamedTuple):
    pc: str  # the next step
    attempt: int = 0
    pool: frozenset[int] = frozenset()  # the members the pool read listed
    peers: tuple[tuple[int, bool, int, bool], ...] = ()  # (peer, in pool, intent, record) as read
    verdict: bool = False
    conflict: bool = False


Rule = Callable[[list[PoolView], int], Verdict]


class Model(NamedTuple):
    agents: int
    floor: int
    max_unavailable: int
    others: int  # members that are not drainer agents, in service throughout
    rule: Rule = admit
    retries: int = 1


def _steps(model: Model, me: int, local: Local, shared: Shared) -> Iterator[tuple[Local, Shared]]:
    """The agent's next step (nothing once it is done)."""
    n = model.agents
    peers = [j for j in range(n) if j != me]

    def put(**fields: object) -> Shared:
        changed = {}
        for field, value in fields.items():
            values = list(getattr(shared, field))
            values[me] = value
            changed[field] = tuple(values)
        return shared._replace(**changed)

    if local.pc == "write":
        yield local._replace(pc="read-pool", peers=()), put(intent=me * 10 + local.attempt + 1)
    elif local.pc == "read-pool":
        listed = frozenset(j for j in peers if shared.in_pool[j])
        yield local._replace(pc="read-peer", pool=listed), shared
    elif local.pc == "read-peer":
        # The peers in any order (drainer.act.floor reads them in a random one); without
        # max_unavailable the reads stop once the peers read so far keep the floor (a peer not read
        # is not counted).
        done = {p[0] for p in local.peers}
        for j in (j for j in peers if j not in done):
            seen = local._replace(
                peers=(*local.peers, (j, shared.in_pool[j], shared.intent[j], shared.record[j]))
            )
            enough = model.max_unavailable == 0 and _verdict(model, seen).ok
            last = len(seen.peers) == len(peers)
            yield seen._replace(pc="decide" if last or enough else "read-peer"), shared
    elif local.pc == "decide":
        verdict = _verdict(model, local)
        yield local._replace(pc="act", verdict=verdict.ok, conflict=verdict.conflict), shared
    elif local.pc == "act":
        if local.verdict:
            yield local._replace(pc="restore"), put(in_pool=False, record=True)
        elif local.conflict and local.attempt < model.retries:
            yield local._replace(pc="write", attempt=local.attempt + 1), put(intent=0)
        else:
            yield local._replace(pc="done"), put(intent=0)
    elif local.pc == "restore":
        # Back in the pool (one NIC write; the record goes with it), the intent still on the NIC.
        yield local._replace(pc="release"), put(in_pool=True, record=False)
    elif local.pc == "release":
        yield local._replace(pc="done"), put(intent=0)


def _verdict(model: Model, local: Local) -> Verdict:
    """The rule on what this agent has read (its peers so far, and the members that are no agents)."""
    return _rule(model, local.pool, local.peers)


@functools.cache
def _rule(model: Model, pool: frozenset[int], peers: tuple[tuple[int, bool, int, bool], ...]) -> Verdict:
    members = tuple(
        Member(
            f"vm{j}",
            # The pool's list says which NICs to read; with max_unavailable, the resource group's
            # NICs are read too (drainer.act.floor): a NIC not listed counts only when read.
            serving=inside and (j in pool or model.max_unavailable > 0),
            leaving=intent != 0,
            out_by_drainer=not inside and record,
        )
        for j, inside, intent, record in peers
    ) + tuple(Member(f"other{k}", serving=True, leaving=False) for k in range(model.others))
    return model.rule([PoolView("pool", model.floor, members)], model.max_unavailable)


def _check(model: Model, shared: Shared, where: Callable[[], str]) -> None:
    serving = sum(shared.in_pool) + model.others
    if serving < min(model.floor, model.agents + model.others):
        raise AssertionError(f"{model}: {serving} in service at {where()}")
    out = model.agents + model.others - serving
    if model.max_unavailable and out > model.max_unavailable:
        raise AssertionError(f"{model}: {out} out at {where()}")


def explore(model: Model) -> tuple[int, int]:
    """Every reachable state of the model, the invariant checked in each: (distinct states, complete
    interleavings, counted over the state graph)."""
    n = model.agents
    start = (tuple(Local("write") for _ in range(n)), Shared((True,) * n, (0,) * n, (False,) * n))
    paths: dict[object, int] = {}

    def visit(state: tuple[tuple[Local, ...], Shared]) -> int:
        if state in paths:
            return paths[state]
        locals_, shared = state
        _check(model, shared, lambda: f"{[loc.pc for loc in locals_]} {shared}")
        total = 0
        for i in range(n):
            for local, after in _steps(model, i, locals_[i], shared):
                total += visit(((*locals_[:i], local, *locals_[i + 1 :]), after))
        paths[state] = total or 1
        return paths[state]

    complete = visit(start)
    return len(paths), complete


def enumerate_schedules(model: Model) -> int:
    """Two agents, no memory: every interleaving walked on its own, step by step."""
    n = model.agents
    count = 0

    def walk(locals_: tuple[Local, ...], shared: Shared, trace: tuple[str, ...]) -> None:
        nonlocal count
        _check(model, shared, lambda: " ".join(trace))
        moved = False
        for i in range(n):
            for local, after in _steps(model, i, locals_[i], shared):
                moved = True
                walk((*locals_[:i], local, *locals_[i + 1 :]), after, (*trace, f"{i}:{locals_[i].pc}"))
        if not moved:
            count += 1

    walk(tuple(Local("write") for _ in range(n)), Shared((True,) * n, (0,) * n, (False,) * n), ())
    return count


def _name(model: Model) -> str:
    rule = "" if model.rule is admit else f"-{model.rule.__name__.strip('_')}"
    return f"{model.agents}vms-floor{model.floor}-max{model.max_unavailable}-others{model.others}{rule}"


TWO = [Model(2, floor, 0, others) for floor in (0, 1, 2) for others in (0, 1)] + [
    Model(2, 0, 1, 1),
    Model(2, 1, 1, 2),
]
THREE = [Model(3, 1, 0, 0), Model(3, 2, 0, 0), Model(3, 0, 1, 1)]


@pytest.mark.parametrize("model", TWO, ids=_name)
def test_two_vms_every_reachable_state_keeps_the_floor(model: Model) -> None:
    states, schedules = explore(model)
    assert states > 50
    assert schedules > 200


@pytest.mark.parametrize("model", [Model(2, 1, 0, 0), Model(2, 0, 1, 1)], ids=_name)
def test_two_vms_every_interleaving_walked_one_by_one_keeps_the_floor(model: Model) -> None:
    schedules = enumerate_schedules(model)
    assert schedules == explore(model)[1] > 200_000  # the walk and the state graph agree


@pytest.mark.parametrize("model", THREE, ids=_name)
def test_three_vms_every_reachable_state_keeps_the_floor(model: Model) -> None:
    states, schedules = explore(model)
    assert states > 100_000
    assert schedules > 10**15


def _alone(views: list[PoolView], max_unavailable: int) -> Verdict:
    """The rule before issue 19: each VM counts the pool as it reads it, ignoring the others' intents."""
    return admit([v._replace(members=tuple(m._replace(leaving=False) for m in v.members)) for v in views], 0)


@pytest.mark.parametrize("model", [Model(2, 1, 0, 0, rule=_alone), Model(3, 2, 0, 0, rule=_alone)], ids=_name)
def test_the_checker_finds_the_race_of_each_vm_checking_alone(model: Model) -> None:
    with pytest.raises(AssertionError, match="in service at"):
        explore(model)


def test_the_checker_finds_a_rule_that_ignores_max_unavailable() -> None:
    def no_slots(views: list[PoolView], max_unavailable: int) -> Verdict:
        return admit(views, 0)

    with pytest.raises(AssertionError, match="out at"):
        explore(Model(3, 0, 1, 1, rule=no_slots))
