"""Log events as text, cheaply: the lines twisted.logger writes, at a fraction of its cost.

Where it sits: the log writers' thread (gateway/logwriter.py's text log and
logs.json_lines) formats every event here. Why: twisted.logger formats an
event's text with a string.Formatter written in Python (its "{f()}" call
syntax) and its time stamp by building a time zone and a datetime per
event: 34 microseconds per line, and an accepted message logs three to
five lines (connect, queued, delivery, disconnect), a tenth of the gateway's
CPU per message in the log writer's thread, which holds the GIL while it
formats (bench/RESULTS.md, 2026-11-27).

Same text, never different: the event's text is str.format_map (C code;
the same format-spec and conversion rules), and anything that path does
not cover (a "{f()}" call, a missing key, a failure, log_system, a
flattened event) goes to twisted.logger's own functions. The time stamp is
made once per second of log_time: it has no finer field.
"""

from __future__ import annotations

import threading

from twisted.logger import LogEvent, formatEvent, formatEventAsClassicLogText, formatTime

_stamps = threading.local()  # one cache per writer thread: (second, text)


def stamp(when: float | None) -> str:
    """formatTime(when) (RFC 3339 to the second, local offset), once per second."""
    if when is None:
        return formatTime(None)
    second = int(when // 1)
    cached = getattr(_stamps, "last", None)
    if cached is not None and cached[0] == second:
        return cached[1]
    text = formatTime(second)
    _stamps.last = (second, text)
    return text


def event_text(event: LogEvent) -> str:
    """formatEvent(event): the event's own text, without time stamp or system."""
    fmt = event.get("log_format")
    if type(fmt) is str and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:  # noqa: BLE001 ("{f()}", a missing key: Twisted's way says so)
            pass
    return formatEvent(event)


def classic_line(event: LogEvent) -> str | None:
    """formatEventAsClassicLogText(event) with twistd's RFC 3339 stamps:
    "2026-11-27T00:28:57+0000 [namespace#level] text\\n", or None for no line."""
    fmt = event.get("log_format")
    if (type(fmt) is not str or "log_failure" in event or "log_system" in event
            or "log_flattened" in event):
        return formatEventAsClassicLogText(event, formatTime=stamp)
    try:
        text = fmt.format_map(event)
    except Exception:  # noqa: BLE001 (see event_text)
        return formatEventAsClassicLogText(event, formatTime=stamp)
    if not text:
        return None
    level = event.get("log_level")
    system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    return f"{stamp(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"
