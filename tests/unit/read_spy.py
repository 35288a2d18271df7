"""Record how much each read() of a file asks for: tests that a message is read in
bounded pieces (never read(-1), never more than a limit) patch a module's open() with it."""

from __future__ import annotations

import builtins


class ReadSpy:
    """spy.open stands in for open() in one module; spy.reads lists each read's size."""

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.real_open = builtins.open

    def open(self, path, mode="r"):
        return _Spied(self.real_open(path, mode), self.reads)


class _Spied:
    def __init__(self, f, reads: list[int]) -> None:
        self.f = f
        self.reads = reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def read(self, n=-1):
        self.reads.append(n)
        return self.f.read(n)
