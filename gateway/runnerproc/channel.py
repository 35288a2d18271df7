"""The runner process's pipe: netstrings (djb's "LEN:DATA,"), a one-byte kind first.

Pure framing, no I/O, so it is tested without a process (tests/unit). It
serves both kinds of child: the runner process and the SMTP accept workers
(gateway/acceptproc). Kinds:
  parent -> runner: Q queue ID (a new spool entry), then NUL and its envelope
                    (JSON) when small, H reload aliases (SIGHUP), S look in
                    the spool for entries nobody told of (an accept worker died)
  runner -> parent: D a Maildir and the names the child renamed into its new/
                    (NUL-separated), C "active scheduled"
                    (the runner's counts), L one log event (JSON),
                    M what the child's metrics counted since its last M
                    (metrics.Registry.changes; JSON)
  worker -> parent: Q as above (the parent tells its runner), L and M as above,
                    A [ID, client, user, password] (SMTP AUTH, checked against
                    the gateway's one guessing budget; JSON),
                    N ["+" or "-", listener, client] (a connection opened or
                    closed: the gateway counts every worker's; JSON)
  parent -> worker: H as above, R [ID, verdict, text] (A's answer; JSON),
                    F ["1" or "0", listener, client] (the client has reached
                    max_connections_per_client on listener across all
                    workers, or is below it again; JSON)
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import LogEvent, LogLevel

from gateway.envelope import Envelope
from gateway.logformat import event_text
from gateway.logs import LINE

QUEUED = b"Q"
RELOAD = b"H"
DELIVERED = b"D"
COUNTS = b"C"
LOG = b"L"
METRICS = b"M"
SCAN = b"S"
AUTH = b"A"
AUTHED = b"R"
COUNTED = b"N"
FULL = b"F"

# R's verdicts: the canonical address follows OK; the others carry the reason.
AUTH_OK = "ok"
AUTH_FAILED = "failed"  # wrong user or password (LoginFailed)
AUTH_THROTTLED = "throttled"  # the guessing budget is spent (AuthThrottled)
AUTH_ERROR = "error"  # anything else (the user file unreadable ...)

# A frame longer than this is a broken pipe, not a message (a log event with a
# long traceback is the biggest thing that travels).
MAX_FRAME = 1 << 20


# Frames are gathered this many seconds before one write to the pipe: each write
# costs the writer four epoll_ctl calls (Twisted's process pipes watch for their
# end between writes), measured a tenth of the runner process's reactor when
# every reactor turn wrote its few frames (bench/RESULTS.md, 2026-11-27).
GATHER = 0.005


class FrameError(ValueError):
    """The other side wrote something that is not a frame of this channel."""


class Gatherer:
    """Frames written within GATHER seconds of the first go out in one write(): no
    I/O here (write is the transport's), so it is tested on a task.Clock."""

    def __init__(self, clock, write, delay: float = GATHER):
        self.clock = clock
        self.write = write
        self.delay = delay
        self._frames: list[bytes] = []
        self._call = None

    def __call__(self, data: bytes) -> None:
        self._frames.append(data)
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self.flush)

    def cancel(self) -> None:
        """Forget what was gathered (the other end is gone)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._frames = []

    def flush(self) -> None:
        """Write what was gathered now (also when the channel closes)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        frames, self._frames = self._frames, []
        if frames:
            self.write(b"".join(frames))


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """One netstring holding kind and payload."""
    body = kind + payload
    return b"%d:%s," % (len(body), body)


def frames(kind: bytes, payloads) -> bytes:
    """Many frames of one kind, for one write."""
    return b"".join(frame(kind, p) for p in payloads)


class Decoder:
    """Bytes as they come off the pipe -> (kind, payload) pairs, whole frames only."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        buf = self._buffer + data
        out = []
        pos = 0
        while True:
            colon = buf.find(b":", pos, pos + 12)
            if colon < 0:
                if len(buf) - pos > 11:
                    raise FrameError(f"no length in {buf[pos:pos + 12]!r}")
                break
            digits = buf[pos:colon]
            if not digits.isdigit():
                raise FrameError(f"bad length {digits!r}")
            size = int(digits)
            if size < 1 or size > self.max_frame:
                raise FrameError(f"frame of {size} bytes")
            end = colon + 1 + size
            if len(buf) < end + 1:
                break
            if buf[end:end + 1] != b",":
                raise FrameError("frame not ended by a comma")
            out.append((buf[colon + 1:colon + 2], buf[colon + 2:end]))
            pos = end + 1
        self._buffer = buf[pos:]
        return out


# An envelope up to this size travels with its queue ID, so that the runner's first
# attempt needs no read of the spool (as in one process: QueueRunner.enqueued); a
# bigger one (a list's thousands of recipients) is read from the spool by the child.
MAX_ENVELOPE = 65536


def join_queued(queue_id: str, envelope: Envelope | None) -> bytes:
    """A Q frame's payload: the queue ID, and the envelope as spooled when small."""
    qid = queue_id.encode("ascii")
    if envelope is None:
        return qid
    data = json.dumps(envelope.to_json(), separators=(",", ":")).encode("utf-8")
    return qid if len(data) > MAX_ENVELOPE else qid + b"\0" + data


def split_queued(payload: bytes) -> tuple[str, Envelope | None]:
    """join_queued's payload -> the queue ID and its envelope (None: read the spool)."""
    qid, _, data = payload.partition(b"\0")
    queue_id = qid.decode("ascii", "replace")
    if not data:
        return queue_id, None
    try:
        envelope = Envelope.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return queue_id, None  # the spool has it: the attempt reads it there
    envelope.queue_id = queue_id
    return queue_id, envelope


def join_delivered(path: str, names: list[str]) -> bytes:
    """A D frame's payload: the Maildir, then each name renamed into its new/."""
    return "\0".join([path, *names]).encode("utf-8", "surrogateescape")


def split_delivered(payload: bytes) -> tuple[str, list[str]]:
    path, *names = payload.decode("utf-8", "surrogateescape").split("\0")
    return path, names


def join_fields(*fields: str) -> bytes:
    """An A or R frame's payload: text fields as a JSON array (a password may hold
    any character, NUL included: SASL LOGIN's are base64 of anything)."""
    return json.dumps(fields, separators=(",", ":")).encode("utf-8", "surrogateescape")


def split_fields(payload: bytes, count: int) -> list[str]:
    """join_fields' payload -> exactly count text fields (FrameError otherwise)."""
    try:
        fields = json.loads(payload)
    except ValueError as e:
        raise FrameError(f"bad fields: {e}") from None
    if not isinstance(fields, list) or len(fields) != count or \
            not all(isinstance(f, str) for f in fields):
        raise FrameError(f"not {count} text fields")
    return fields


# -- log events: formatted where they happen, fields kept for the parent's observers --

_PLAIN = (str, int, float, bool, type(None))


def encode_event(event: LogEvent, process: str = "runner") -> bytes:
    """A log event as JSON: its text (with a failure's traceback), level, time,
    namespace, and every plain field (queue_id, to, ...) for the JSON log."""
    line = event.get("log_line")
    # logs.LINE: the text is made already (the runner's status= lines).
    text = line if event.get("log_format") == LINE and isinstance(line, str) \
        else event_text(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    out: dict[str, Any] = {k: v for k, v in event.items()
                           if isinstance(v, _PLAIN) and not k.startswith("log_")}
    level = event.get("log_level")
    name = level.name if isinstance(level, type(LogLevel.info)) else "info"
    namespace = event.get("log_namespace", "?")
    # The line reads as it would in one process ("[namespace#level]"); the JSON log
    # has process=runner.
    out.update(log_text=text, log_time=event.get("log_time"), log_namespace=namespace,
               log_level=name, log_system=event.get("log_system") or f"{namespace}#{name}",
               process=process)
    return json.dumps(out, default=repr).encode("utf-8")


def decode_metrics(payload: bytes) -> dict:
    """An M frame's JSON -> metrics.Registry.changes()'s dict, for merge()."""
    try:
        changes = json.loads(payload)
    except ValueError as e:
        raise FrameError(f"metrics that are not JSON ({e})") from None
    if not isinstance(changes, dict):
        raise FrameError("metrics that are not an object")
    return changes


def decode_event(payload: bytes) -> LogEvent:
    """encode_event's JSON -> an event the parent's observers take as their own."""
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise FrameError("a log event that is not an object")
    try:
        event["log_level"] = LogLevel.levelWithName(str(event.get("log_level")))
    except Exception:  # noqa: BLE001 (an unknown level name: still a line)
        event["log_level"] = LogLevel.info
    event["log_format"] = "{log_text}"
    event.setdefault("log_text", "")
    return event
