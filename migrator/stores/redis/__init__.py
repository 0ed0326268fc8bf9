"""Redis store package: wire code and archive format side by side.

* ``store.py``: the store (units, export/import as DUMP payloads, digests, sync, guards).
* ``value.py``: per-type value reading, canonical fingerprints, key text.
* ``wire.py``: pipelined RESP on raw sockets (SCAN pages, packed commands).

Importing the package loads no driver; ``registry`` imports ``store`` when Redis is used.
"""
