"""What the files wsroom serves over plain HTTP share: their entity tags and revalidation."""

from __future__ import annotations

import hashlib

__all__ = ["etag_matches", "etag_of"]


def etag_of(body: bytes) -> str:
    """A strong entity tag for ``body``."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether a request's ``If-None-Match`` header names ``etag`` (weakly, or with ``*``):
    the client's copy is current and a 304 answers it."""
    if if_none_match is None:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
