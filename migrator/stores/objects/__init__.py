"""Object storage store: any S3-compatible service (MinIO, AWS S3, OSS, COS).

Only the S3 API of the ``minio`` client is used, so nothing here depends on MinIO itself,
except following changes (``feed.py``: MinIO's ListenBucketNotification), which other
services refuse and ``sync`` then digests.

* Units are contiguous key ranges of a bucket (``ranges.py``). A bucket above
  ``unit_records`` objects or ``unit_bytes`` bytes is split at leading characters after a
  common prefix (OpenIM's ``openim/data/hash/<md5>`` splits by hex digit), found in one
  streaming pass over the sorted listing. Ranges never overlap, and a key created between
  two split prefixes still belongs to exactly one unit. A plan whose units no longer tile
  a bucket is refused (``uncovered``); a bucket with no unit is reported by verify
  (``unlisted``).
* Batches hold object descriptors, never bodies (``records.py``), cut by count. The
  importer streams each body from the source into ``put_object`` in one pool of threads
  shared by every batch, with a memory budget shared by all copies of the store
  (``transfer.py``). ``sync`` fetches descriptors by key (one HEAD each) and deletes in
  bulk; S3 has no write guard, so a freeze relies on OpenIM's writers being stopped.
* Verification compares size, a content MD5, content type, user metadata and the standard
  headers we copy. A single-part ETag *is* the MD5; for a multipart ETag the MD5 is
  streamed once and kept in ``hash_cache`` (keyed by the object's version), so both sides
  always yield comparable fingerprints whatever part sizes each side used.
* Bucket settings (policy, versioning, object lock, encryption, tags, lifecycle rules) are
  copied and compared as store-level definitions (``settings.py``).
* URLs, options and unit specs are checked before anything connects (``endpoint.py``).
"""

from migrator.stores.objects.ranges import separator, split_ranges
from migrator.stores.objects.records import CacheKey, HashCache, ObjectRecord
from migrator.stores.objects.store import ObjectStore
from migrator.stores.objects.transfer import missing_objects

__all__ = ["CacheKey", "HashCache", "ObjectRecord", "ObjectStore", "missing_objects",
           "separator", "split_ranges"]
