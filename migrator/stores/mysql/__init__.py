"""MySQL / MariaDB store package: wire code and archive format side by side.

* ``store.py``: the store (units, raw-bytes export, LOAD DATA import, digests, sync, guards).
* ``conn.py``: connections, TLS, and LOAD DATA LOCAL answered from memory.
* ``schema.py``: columns, keys and table DDL; ``objects.py``: views, triggers, routines,
  events and their DEFINERs.

Importing the package loads no driver; ``registry`` imports ``store`` when MySQL is used.
"""
