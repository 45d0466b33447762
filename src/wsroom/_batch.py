"""Batched frames (PROTOCOL.md, "Batched frames"): several queued frames in one message.

A connection that negotiated ``wsroom.v1.batch`` gets the frames waiting in its queue packed
into JSON arrays, so that an adapter writes one WebSocket message where it would have
written many: under load, the per-message cost of the server (an ASGI ``send``, a frame
header, a write) is paid once per batch instead of once per frame. Only what is already
queued is packed; nothing waits for company.
"""

from __future__ import annotations

__all__ = ["batch_size", "pack"]


def batch_size(frames: list[bytes]) -> int:
    """The size in bytes of ``frames`` packed into one array: brackets and commas."""
    return sum(map(len, frames)) + len(frames) + 1


def pack(frames: list[bytes], limit: int) -> list[bytes]:
    """The WebSocket messages carrying ``frames``, in order: runs of frames packed into
    JSON arrays of at most ``limit`` bytes each.

    A run of one frame stays a plain object (an array of one is bytes for nothing), and a
    frame that alone exceeds ``limit`` travels alone, as it would without batching. The
    frames are encoded JSON objects, so joining them inside brackets is the array's
    encoding: nothing is decoded again.
    """
    if len(frames) < 2:
        return frames
    if batch_size(frames) <= limit:
        # The common case under load: the whole queue is one batch.
        return [_array(frames)]
    messages: list[bytes] = []
    run: list[bytes] = []
    size = 1  # the opening bracket; each frame adds its length and a comma or the ']'
    for frame in frames:
        cost = len(frame) + 1
        if run and size + cost > limit:
            messages.append(run[0] if len(run) == 1 else _array(run))
            run = []
            size = 1
        run.append(frame)
        size += cost
    messages.append(run[0] if len(run) == 1 else _array(run))
    return messages


def _array(frames: list[bytes]) -> bytes:
    # Two copies of the frames' bytes, where "[" + ... + "]" would make three.
    return b"".join((b"[", b",".join(frames), b"]"))
