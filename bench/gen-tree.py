#!/usr/bin/env python3
"""Writes a deterministic tree of mixed files for the imaging benchmarks.

usage: gen-tree.py DIR TOTAL_BYTES [SEED]

Sizes are log-uniform from 1 KiB to 8 MiB. Contents mix what a lab disk holds: incompressible
data (media, archives, binaries' compressed sections), text-like data (source, configs, logs:
zstd shrinks it 3-5x) and sparse/structured data (mostly zeros with records).
"""
import os
import random
import sys

def main():
    root, total = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))).encode()
             for _ in range(4000)]
    text = b" ".join(rng.choice(words) + (b"\n" if rng.random() < 0.1 else b"") for _ in range(400000))
    written, i = 0, 0
    while written < total:
        d = os.path.join(root, "d%02d" % (i % 37), "s%d" % (i % 5))
        os.makedirs(d, exist_ok=True)
        size = min(int(2 ** rng.uniform(10, 23)), total - written)
        kind = rng.random()
        if kind < 0.4:
            data = rng.randbytes(size)
        elif kind < 0.8:
            off = rng.randrange(0, len(text) - 1)
            chunk = (text[off:] + text)[:size]
            data = chunk
        else:
            buf = bytearray(size)
            for _ in range(size // 4096 + 1):
                p = rng.randrange(0, max(1, size - 64))
                buf[p:p + 64] = rng.randbytes(64)[: max(0, min(64, size - p))]
            data = bytes(buf)
        with open(os.path.join(d, "f%06d.dat" % i), "wb") as f:
            f.write(data)
        written += size
        i += 1
    print(f"{i} files, {written} bytes in {root}")

if __name__ == "__main__":
    main()
