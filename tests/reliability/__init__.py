"""The reliability suite: hostile clients, a hostile network and failing servers.

Each test is one scenario of docs/reliability.md, at CI scale by default and at soak scale
with ``WSROOM_RELIABILITY=soak``; each records the figures that page reports.
"""
