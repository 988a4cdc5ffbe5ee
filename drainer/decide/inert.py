"""Other VMs' events listed unchanged, set aside before the core folds a document (issue 14).

The daemon polls every second. With a thousand events of other VMs listed, folding each of them on
every poll was most of its CPU, although such an event can change nothing: its record says
``other-vm`` (decided for this VM's name) and the listed event is the one recorded, so the core skips
it, and no decision looks at other VMs' records. Such events are *inert*: the runner hands the core the
document and the state without them and puts their records back into the decision's state.

While nothing changes, the daemon gets the very same document object (the IMDS answer is reused) and
the very same state object (the state cache) on every poll, so the split is remembered by identity: a
poll then costs what this VM's own events cost. Any change (a new answer, a save, another VM name)
makes new objects, and the split is worked out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from drainer.base.events import EventsDocument
from drainer.decide.model import Decision, EventRecord, State
from drainer.decide.observe import not_listing, unchanged_other_vm


class Split(NamedTuple):
    document: EventsDocument  # without the inert events
    state: State  # without their records
    inert: Mapping[str, EventRecord]  # the records set aside, by key

    def merge(self, decision: Decision) -> Decision:
        """The decision the core would have made on the whole document and state."""
        events = {**self.inert, **decision.state.events}
        return decision._replace(state=decision.state._replace(events=events))


def split(document: EventsDocument, state: State, vm_name: str) -> Split | None:
    """The document and state without the inert events; None when there are none, or when an id is
    listed twice (the core works out which entry wins)."""
    keys = document.keys_of()
    if len(set(keys)) != len(keys):
        return None
    not_mine = not_listing(vm_name)
    get = state.events.get
    inert: dict[str, EventRecord] = {}
    kept: list[int] = []
    for index, (key, event) in enumerate(zip(keys, document.events, strict=True)):
        old = get(key)
        if old is not None and unchanged_other_vm(old, event, not_mine):
            inert[key] = old
        else:
            kept.append(index)
    if not inert:
        return None
    reduced = document._replace(events=tuple(document.events[i] for i in kept))
    rest = {k: r for k, r in state.events.items() if k not in inert}
    return Split(document=reduced, state=state._replace(events=rest), inert=inert)


# The last split worked out, with the objects it was worked out from (strong references: the
# identities stay valid). One entry: one daemon, one VM.
_LAST: list[tuple[EventsDocument, State, str, Split | None]] = []


def split_remembered(document: EventsDocument, state: State, vm_name: str) -> Split | None:
    """``split``, remembered for the very same document and state objects."""
    if _LAST:
        last_document, last_state, last_name, last = _LAST[0]
        if last_document is document and last_state is state and last_name == vm_name:
            return last
    result = split(document, state, vm_name)
    _LAST[:] = [(document, state, vm_name, result)]
    return result
