"""zlib's modes on the octets COMPRESS=DEFLATE carries: size and CPU per MiB.

Why: gateway/deflate.py compresses protocol text at [imap] compress_level and a
big message's octets (FETCH's pieces of a section of fetch_buffer or more)
Huffman-coded only. This prints, for a base64 attachment and for English-like
text, what each mode makes of 8 MiB: the share left, milliseconds per MiB to
compress (the server's) and to inflate (the client's), on this machine's zlib.
No peer: the figures are zlib's own, the choice is between its modes.

    python bench/deflate_modes.py [--mib 8]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import time
import zlib

MODES = (("level 1", (1,)), ("level 6", (6,)),
         ("Huffman only", (1, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)),
         ("stored (level 0)", (0,)))


def samples(mib: int) -> dict[str, bytes]:
    rng = random.Random(13)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(1, 9)))
             for _ in range(3000)]
    lines, size = [], 0
    while size < mib << 20:
        line = b" ".join(rng.choice(words) for _ in range(12)) + b"\r\n"
        lines.append(line)
        size += len(line)
    return {"base64 attachment": base64.encodebytes(os.urandom(mib * 3 << 18)).replace(
                b"\n", b"\r\n"),
            "text": b"".join(lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=8)
    args = ap.parse_args()
    print("| octets | mode | left | compress ms/MiB | inflate ms/MiB |")
    print("|---|---|---:|---:|---:|")
    for name, data in samples(args.mib).items():
        mib = len(data) / 2**20
        for label, params in MODES:
            z = zlib.compressobj(params[0], zlib.DEFLATED, -15, *params[3:])
            started = time.perf_counter()
            out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
            took = time.perf_counter() - started
            started = time.perf_counter()
            assert zlib.decompressobj(-15).decompress(out) == data
            back = time.perf_counter() - started
            print(f"| {name} | {label} | {len(out) / len(data):.1%} | {took * 1000 / mib:.1f} "
                  f"| {back * 1000 / mib:.1f} |")


if __name__ == "__main__":
    main()
