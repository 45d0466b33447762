"""Who may read /metrics: the scraper, which sends a bearer token."""

import hmac
import os

from wsroom import Handshake

# Prometheus sends it with `authorization: {type: Bearer, credentials: ...}` in its
# scrape config; keep it out of the code.
TOKEN = os.environ.get("METRICS_TOKEN", "")


def has_token(request: Handshake) -> bool:
    """Whether the request carries the scraper's token (no token configured: nobody)."""
    given = request.headers.get("authorization", "")
    return bool(TOKEN) and hmac.compare_digest(given.encode(), f"Bearer {TOKEN}".encode())
