"""MongoDB store package: wire code and archive format side by side.

* ``store.py``: the store (_id-range units, raw BSON export/import, digests, sync, guards).
* ``meta.py``: URLs and options, indexes, collection options, views and validators, the
  server's flavour (MongoDB, FerretDB, DocumentDB) and what it refuses.

Importing the package loads no driver; ``registry`` imports ``store`` when MongoDB is used.
"""
