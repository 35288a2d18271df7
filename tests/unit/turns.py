"""Run what a session left for the reactor's next turn (flow.ReadGate.spend), as the
reactor would between reads: the dialogues call this before they look at the output."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock


def next_turns(clock: MemoryReactorClock) -> None:
    while any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
        clock.advance(0)
