"""Benchmarks of tokenflight against a static-header baseline and the libraries users
would pick instead.

``python -m bench`` (or ``just bench``) runs every group and rewrites docs/benchmarks.md;
``--quick`` runs short rounds and prints them; ``--only NAME`` runs one group. The groups:

* ``cache``: the cache alone, a fresh-token ``get()`` and a cold burst of 10,000 callers;
* ``hot``: requests per second with a valid token, in-process and on loopback;
* ``burst``: 1,000 and 10,000 concurrent requests at cold start and after expiry;
* ``outage``: the token endpoint responds with 503 for 2 seconds under 200 callers;
* ``cancel``: the task that started a refresh is cancelled;
* ``stall``: the longest event-loop stall while tokens expire under light load;
* ``jwt``: requests that each need a locally signed JWT, against per-request signing;
* ``memory``: memory per cached key with 100,000 keys.

The figures are reports; nothing here asserts a timing.
"""
