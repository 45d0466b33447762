"""Where a server spent its time: a summary of ``fanout.py --profile`` samples.

    python benchmarks/profile_summary.py DIR/wsroom-n1000-r0-node0.txt [more files...]
    python benchmarks/profile_summary.py --top 30 DIR/*.txt

Each file holds py-spy's collapsed stacks (``frame;frame;... count`` per line, outermost
frame first). The summary lists the functions with the most samples of their own (self),
and those with the most samples in them or in what they called (inclusive), as shares of
all the samples of the given files.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)``: lines of one function
    are counted together."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({Path(match['file']).name})"


def summarise(lines: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples per function, inclusive samples per function)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    return total, own, inclusive


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20, help="functions listed per table")
    args = parser.parse_args(argv)
    lines: list[str] = []
    for path in args.files:
        lines += path.read_text().splitlines()
    total, own, inclusive = summarise(lines)
    if not total:
        raise SystemExit("no samples in these files")
    print(f"{total} samples in {len(args.files)} file(s)")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n| {title} | function |\n|--:|---|")
        for name, samples in counter.most_common(args.top):
            print(f"| {100 * samples / total:.1f}% | `{name}` |")


if __name__ == "__main__":
    main()
