"""gateway/logformat.py: the same lines as twisted.logger's formatting, made cheaply."""

from __future__ import annotations

import time

import pytest
from twisted.logger import (
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure

from gateway import logformat

NOW = 1795912345.678


def _twisted_line(event):
    return formatEventAsClassicLogText(event, formatTime=lambda e: formatTime(e, timeFormatRFC3339))


def _event(fmt, **fields):
    event = {"log_format": fmt, "log_time": NOW, "log_level": LogLevel.info,
             "log_namespace": "mailgateway", "log_source": None, "log_logger": None}
    event.update(fields)
    return event


def _failure_event():
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        return _event("it broke for {client}", client="192.0.2.1", log_failure=Failure())


EVENTS = {
    "queued": _event("{queue_id}: from=<{sender}>, size={size}, nrcpt={nrcpt}, "
                     "message-id={msgid}, client={client_name} queued", queue_id="4Xabc",
                     sender="a@b.test", size=2300, nrcpt=1, msgid="<1@b>",
                     client_name="unknown[192.0.2.1]"),
    "spec and conversion": _event("delay={delay:.1f} {x!r} {{literal}}", delay=1.25, x="q"),
    "attribute and index": _event("{level.name} {items[0]}", level=LogLevel.warn, items=[7]),
    "call syntax": _event("{f()} done", f=lambda: "called"),
    "missing key": _event("{nothing} here"),
    "bad spec": _event("{n:q}", n=3),
    "lines": _event("first\nsecond {x}", x="third\nfourth"),
    "no format": _event(None),
    "empty text": _event(""),
    "bytes format": _event(b"bytes {x}", x=1),
    "system": _event("from {x}", x=1, log_system="tlsfront"),
    "no level or namespace": {"log_format": "bare {x}", "x": 1, "log_time": NOW},
    "no time": _event("timeless", log_time=None),
    "failure": _failure_event(),
    "flattened": _event("{x}", x=1, log_flattened={"x!:": "flat"}),
    "unicode": _event("user=<{user}>", user="j\u00f6rg\u2603"),
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_classic_line_is_twisteds_line(name):
    event = EVENTS[name]
    assert logformat.classic_line(event) == _twisted_line(event)


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_event_text_is_twisteds_text(name):
    event = EVENTS[name]
    assert logformat.event_text(event) == formatEvent(event)


def test_stamp_is_formattime_for_every_second_even_when_cached():
    base = time.time()
    for offset in (0.0, 0.2, 0.999, 1.0, 1.5, 61.0, 3600.0, -0.5, 86400 * 183):
        when = base + offset
        assert logformat.stamp(when) == formatTime(when, timeFormatRFC3339), offset
    assert logformat.stamp(None) == formatTime(None)


def test_ordinary_events_do_not_take_twisteds_slow_formatter(monkeypatch):
    def slow(*args, **kwargs):
        raise AssertionError("the Python-level formatter was used")

    monkeypatch.setattr(logformat, "formatEventAsClassicLogText", slow)
    monkeypatch.setattr(logformat, "formatEvent", slow)
    line = logformat.classic_line(EVENTS["queued"])
    assert line.endswith("[mailgateway#info] 4Xabc: from=<a@b.test>, size=2300, nrcpt=1, "
                         "message-id=<1@b>, client=unknown[192.0.2.1] queued\n")
    assert logformat.event_text(EVENTS["spec and conversion"]) == "delay=1.2 'q' {literal}"
