"""flow.ReadGate: a busy command holds the session's commands at once, its transport's
reading only once input comes meanwhile; every other hold pauses the transport."""

from __future__ import annotations

from gateway import flow


def gate() -> tuple[flow.ReadGate, list[str]]:
    calls: list[str] = []
    g = flow.ReadGate(lambda: calls.append("pause"), lambda: calls.append("resume"),
                      lambda: calls.append("lines held"))
    return g, calls


def test_a_busy_command_answered_before_more_input_never_pauses_the_transport():
    g, calls = gate()
    g.hold(flow.BUSY)
    assert not g.open and calls == ["lines held"]
    g.release(flow.BUSY)
    assert g.open and calls == ["lines held", "resume"]


def test_input_while_busy_pauses_the_transport_once():
    g, calls = gate()
    g.hold(flow.BUSY)
    g.arrived()
    g.arrived()
    assert calls == ["lines held", "pause"]
    g.release(flow.BUSY)
    assert calls == ["lines held", "pause", "resume"]
    g.arrived()  # open again: nothing to do
    assert calls[-1] == "resume"


def test_another_hold_while_busy_pauses_at_once_and_the_last_release_resumes():
    for other in (flow.OUTPUT, flow.DISK, flow.TURN):
        g, calls = gate()
        g.hold(flow.BUSY)
        g.hold(other)
        assert calls == ["lines held", "pause"]
        g.release(flow.BUSY)
        assert calls == ["lines held", "pause"] and not g.open
        g.release(other)
        assert calls == ["lines held", "pause", "resume"]


def test_holds_other_than_busy_pause_the_transport_at_once():
    g, calls = gate()
    g.hold(flow.OUTPUT)
    g.hold(flow.BUSY)  # already paused: nothing more
    assert calls == ["pause"]
    g.arrived()
    assert calls == ["pause"]
