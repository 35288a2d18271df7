"""gateway/logwriter.py: log lines leave the logging thread, in order, bounded, and
none is lost at a stop; tap.py's observer is the one twistd logs to."""

from __future__ import annotations

import io
import json
import os
import signal
import threading

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogPublisher

from gateway import logs, logwriter, tap
from gateway.metrics import REGISTRY
from gateway.startup import Guard


class GatedFile(io.StringIO):
    """A file whose writes wait until the test opens the gate (a disk that stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writing = threading.Event()
        self.writer_threads: set[str] = set()

    def write(self, text: str) -> int:
        self.writing.set()
        self.writer_threads.add(threading.current_thread().name)
        self.gate.wait(30)
        return super().write(text)


def test_lines_are_written_in_order_by_the_writer_thread():
    out = GatedFile()
    writer = logwriter.LineWriter(out, limit=1000)
    writer.start()
    try:
        for i in range(500):
            writer.write(f"line {i}\n")  # returns at once although the file is stalled
        assert out.getvalue() == ""
    finally:
        out.gate.set()
        writer.close()
    assert out.getvalue() == "".join(f"line {i}\n" for i in range(500))
    assert out.writer_threads == {"log writer"}


def test_a_full_queue_drops_and_counts_lines_and_says_so():
    out = GatedFile()
    writer = logwriter.LineWriter(out, limit=3)
    before = REGISTRY.counters.get(("mailgateway_log_lines_dropped_total", ()), 0.0)
    publisher = LogPublisher()
    warnings: list[dict] = []
    publisher.addObserver(warnings.append)
    logwriter.log.observer, saved = publisher, logwriter.log.observer
    writer.start()
    try:
        writer.write("first\n")
        assert out.writing.wait(10)  # the thread holds "first" and waits on the disk
        for i in range(10):
            writer.write(f"more {i}\n")
        out.gate.set()
        writer.close()
    finally:
        logwriter.log.observer = saved
    # Three waited (the bound), seven were dropped and counted; nothing else was lost.
    assert out.getvalue() == "first\nmore 0\nmore 1\nmore 2\n"
    assert writer.dropped == 7
    assert REGISTRY.counters[("mailgateway_log_lines_dropped_total", ())] == before + 7
    (warning,) = warnings
    assert warning["count"] == 7 and warning["limit"] == 3
    assert warning["log_format"].startswith("log: {count} lines dropped")


def test_close_writes_every_waiting_line_and_later_lines_at_once():
    out = GatedFile()
    writer = logwriter.LineWriter(out, limit=100)
    writer.start()
    for i in range(50):
        writer.write(f"{i}\n")
    out.gate.set()
    writer.close()
    assert out.getvalue() == "".join(f"{i}\n" for i in range(50))
    writer.write("Server Shut Down.\n")  # twistd's last line, after the services stopped
    assert out.getvalue().endswith("49\nServer Shut Down.\n")


def test_before_start_lines_are_written_at_once():
    out = io.StringIO()
    writer = logwriter.LineWriter(out)
    writer.write("twistd starting up\n")
    assert out.getvalue() == "twistd starting up\n"


def test_a_rotation_waits_for_the_lines_logged_before_it():
    out = GatedFile()
    writer = logwriter.LineWriter(out, limit=100)
    seen: list[str] = []
    writer.start()
    writer.write("before\n")
    writer.call(lambda: seen.append(out.getvalue()))
    writer.write("after\n")
    out.gate.set()
    writer.close()
    assert seen == ["before\n"]
    assert out.getvalue() == "before\nafter\n"


def test_the_guard_starts_and_stops_the_writers(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # Guard's SIGHUP: not here
    out = GatedFile()
    observer, writer = logwriter.text_observer(out)
    guard = Guard(log_observer=observer, log_queue_lines=5)
    guard.startService()
    try:
        assert writer.limit == 5
        Logger(observer=observer).info("hello {who}", who="world")
        assert out.getvalue() == ""  # queued for the thread
    finally:
        out.gate.set()
        guard.stopService()
    assert out.getvalue().rstrip().endswith("hello world")


def test_twistd_finds_the_observer_on_the_application():
    observer, _ = logwriter.text_observer(io.StringIO())
    application = service.Application("mailgateway")
    Guard(log_observer=observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer


def test_twistds_own_choice_stands_for_logger_and_syslog(tmp_path):
    assert tap._log_observer({"logger": "gateway.logs.json_lines", "nodaemon": True},
                             None) is None
    assert tap._log_observer({"syslog": True}, None) is None
    assert tap._log_observer({"logfile": "-", "nodaemon": False}, None) is None
    assert ILogObserver.providedBy(tap._log_observer({"nodaemon": True}, None))


class ThreadCalls:
    """The one reactor method the SIGUSR1 handler uses."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def callFromThread(self, f, *args) -> None:
        self.calls.append((f, *args))


def test_a_log_file_is_written_by_the_writer_and_rotated_on_sigusr1(tmp_path):
    path = tmp_path / "mailgateway.log"
    reactor = ThreadCalls()
    saved = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        observer = tap._log_observer({"logfile": str(path), "nodaemon": False}, reactor)
        Logger(observer=observer).info("before rotation")
        os.kill(os.getpid(), signal.SIGUSR1)
        ((call, *args),) = reactor.calls
        call(*args)
        Logger(observer=observer).info("after rotation")
    finally:
        signal.signal(signal.SIGUSR1, saved)
    args[0].__self__.close()  # the LogFile whose rotate was called
    assert "before rotation" in (tmp_path / "mailgateway.log.1").read_text()
    assert "after rotation" in path.read_text()
    assert "before rotation" not in path.read_text()


def test_json_lines_are_formatted_by_the_writer_thread_in_order():
    out = GatedFile()
    observer = logs.json_lines(out)
    writer = next(w for w in logwriter._writers if w.out is out)
    writer.start()
    try:
        for i in range(20):
            Logger(observer=observer).info("event {n}", n=i, event="x")
    finally:
        out.gate.set()
        writer.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["n"] for r in records] == list(range(20))
    assert records[0]["text"] == "event 0" and records[0]["level"] == "info"
    assert out.writer_threads == {"log writer"}


def test_lines_of_one_interval_leave_in_one_write():
    out = GatedFile()
    out.gate.set()
    calls: list[str] = []
    write = out.write
    out.write = lambda text: calls.append(text) or write(text)
    writer = logwriter.LineWriter(out, interval=30.0)
    writer.start()
    for i in range(5):
        writer.write(f"{i}\n")
    writer.close()  # ends the wait early, and writes the batch
    assert calls == ["0\n1\n2\n3\n4\n"]

