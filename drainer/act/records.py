"""Records drainer can prove are its own (issue 20).

Anyone who can write a NIC's tags (Azure's "Tag Contributor" role, an IaC tool) can write a
``drainer:`` tag. drainer acts on a record on a NIC (puts the NIC into a pool, sets an address back
in service) only when it verifies: its MAC (``drainer.decide.nicrecord.seal``) is right for this VM's
key (``drainer.io.recordkey``), this NIC and this VM, and it belongs to the drain still open. A record
that does not verify is reported (a warning naming its tags and the way back by hand, the metric
``drainer_unverified_records_total``, ``drainer status``), left out of every plan, and never signed
again: a later write of that NIC drops it. drainer's local ledger is its own and needs no MAC.

One ``RecordGuard`` per action (``ActionContext.records``); the NICs of a VM are written
concurrently (``drainer.act.fanout``), so it takes a lock.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from drainer.base import metrics
from drainer.base.instance import InstanceInfo
from drainer.base.typing import Logger
from drainer.decide.nicrecord import MAC, Seal, decode, is_ours, seal, subscription_of, verify
from drainer.io.recordkey import KeyStore, MemoryKeyStore, RecordKeyError


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _name(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def by_hand(nic_id: str, tags: Mapping[str, str]) -> str:
    """How an operator puts the NIC back into the pools an unverified record names (if they are
    right), and removes the record."""
    parts = nic_id.strip("/").split("/")
    group = parts[3] if len(parts) > 3 else "<resource group>"
    records = decode(tags, subscription_of(nic_id))
    # https://learn.microsoft.com/cli/azure/network/nic/ip-config/address-pool ("the name or ID of
    # an existing backend address pool": the ID works for any resource group, and for gateways)
    # Every name comes from tags anyone with Tag Contributor may write: quoted for the shell, so
    # pasting the advice never runs what a tag smuggled in.
    q = shlex.quote
    steps = [
        f"az network nic ip-config address-pool add -g {q(group)} --nic-name {q(_name(nic_id))} "
        f"-n {q(ref.ipconfig)} --address-pool {q(ref.pool_id)}"
        for ref in records.refs
    ]
    steps += [
        f"set adminState of backend address {a.address} in {_name(a.pool_id)} back to {a.previous}"
        for a in records.admin
    ]
    names = " ".join(q(name) for name in sorted(tags))
    steps.append(f"az tag update --resource-id {q(nic_id)} --operation Delete --tags {names}")
    return "if these pools are right, put the NIC back by hand: " + "; then ".join(steps)


class RecordGuard:
    """Checks the records drainer reads from NICs and signs those it writes."""

    def __init__(
        self,
        keys: KeyStore,
        vm: InstanceInfo,
        log: Logger,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.keys = keys
        self.vm = vm
        self.log = log
        self.now = now
        self.checked: set[str] = set()  # NICs whose records were read (lower-cased ids)
        self.problems: list[dict[str, Any]] = []  # for `drainer status`
        self.errors: list[str] = []  # what failed the run although the action went on
        self._said: set[tuple[str, str, str]] = set()
        self._lock = threading.RLock()

    def trusted(self, nic_id: str, tags: Mapping[str, str]) -> dict[str, str]:
        """The NIC's tags drainer may act on: the foreign ones, and drainer's own when they verify
        (the MAC tag never). Unverified ones are reported once per NIC and action."""
        with self._lock:
            self.checked.add(nic_id.lower())
            if not any(is_ours(k) for k in tags):
                return dict(tags)
            try:
                key = self.keys.key(create=False)
                counter = self.keys.counter()
            except RecordKeyError as exc:
                ours = {k: v for k, v in tags.items() if is_ours(k)}
                if any(k.lower() != MAC for k in ours):
                    self._unverified(nic_id, ours, "no-key", str(exc))
                return {k: v for k, v in tags.items() if not is_ours(k)}
            drain = (counter.number, counter.since) if counter.open else None
            verdict = verify(tags, key, nic_id, self.vm.vm_id, drain)
            if verdict.reason:
                self._unverified(nic_id, verdict.untrusted, verdict.reason, verdict.detail)
            return verdict.trusted

    def seal(self, nic_id: str, tags: Mapping[str, str]) -> dict[str, str]:
        """``tags`` (holding only records drainer vouches for) signed for the open drain, which is
        opened now if none is (before the write that carries the record). Raises RecordKeyError."""
        with self._lock:
            if not any(is_ours(k) and k.lower() != MAC for k in tags):
                return {k: v for k, v in tags.items() if k.lower() != MAC}
            key = self.keys.key(create=True)
            if key is None:  # pragma: no cover - create=True always gives one or raises
                raise RecordKeyError(f"{self.keys.path}: no record key")
            counter = self.keys.open_drain(self.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
            return seal(tags, key, Seal(nic_id, self.vm.vm_id, counter.number, counter.since))

    def unsigned(self, nic_id: str, exc: RecordKeyError) -> None:
        """The record could not be signed (the key or the counter refused or unwritable): it is kept
        in the local ledger instead; the action goes on and the run fails, saying why."""
        with self._lock:
            self.log.error(
                "cannot sign drainer's record on the NIC: keeping it locally",
                nic=_name(nic_id),
                error=str(exc),
            )
            if str(exc) not in self.errors:
                self.errors.append(str(exc))

    def close(self) -> None:
        """The drain ended (everything restored): its records are refused from now on. Raises
        RecordKeyError."""
        with self._lock:
            self.keys.close_drain()

    def disagree(self, nic_id: str, detail: str, pools: list[str]) -> None:
        """The NIC's record and the local copy of the open drain differ (the union is restored)."""
        with self._lock:
            if ("disagree", nic_id.lower(), detail) in self._said:
                return
            self._said.add(("disagree", nic_id.lower(), detail))
            self.log.warning(
                "the NIC's record and the local copy disagree; restoring both",
                nic=_name(nic_id),
                detail=detail,
                pools=pools,
            )
            self.problems.append({"kind": "disagree", "nic": nic_id, "detail": detail, "pools": pools})

    def _unverified(self, nic_id: str, tags: Mapping[str, str], reason: str, detail: str) -> None:
        if (reason, nic_id.lower(), "") in self._said:
            return
        self._said.add((reason, nic_id.lower(), ""))
        shown = sorted(f"{k}={v}" for k, v in tags.items())
        hand = by_hand(nic_id, tags)
        self.log.warning(
            "a drainer record on the NIC cannot be verified: never acted on",
            nic=_name(nic_id),
            reason=detail,
            tags=shown,
            by_hand=hand,
        )
        metrics.current.inc("unverified_records", {"reason": reason})
        self.problems.append(
            {
                "kind": "unverified",
                "nic": nic_id,
                "reason": reason,
                "detail": detail,
                "tags": shown,
                "by_hand": hand,
            }
        )


def memory_guard(vm: InstanceInfo | None = None, log: Logger | None = None) -> RecordGuard:
    """A guard with a key and a counter of its own, for one process (a single action under test)."""
    from drainer.io.log import get_logger  # noqa: PLC0415

    return RecordGuard(MemoryKeyStore(), vm or InstanceInfo(name="(test)"), log or get_logger())
