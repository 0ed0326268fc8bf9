"""Archives: backups of a plan's stores as sets of portable files, on a disk or S3.

An archive is one more endpoint (``archive+file:///path`` or
``archive+s3://host:port/bucket/prefix``): a backup is a run whose target is an archive,
a restore one whose source is. This package knows no store. It gives a store's archive
format a place to write named files (zstd-compressed, optionally age-encrypted, hashed on
the way: ``writer.py``) and to read them back (``Repository.read_file``), and it owns what
makes sets trustworthy: the manifest written last (``manifest.py``), ``check``
(``check.py``) and retention (``retention.py``). Files are laid out as ``layout.py`` says,
on a directory or an S3 prefix (``backends.py``); docs/backups.md has the operator's view.
"""

from migrator.archive.check import CheckReport, check
from migrator.archive.files import ArchiveDamaged, ArchiveFile, ArchiveReader
from migrator.archive.location import archive_endpoint, is_archive_url
from migrator.archive.manifest import Cut, FileEntry, Manifest, UnitRecord
from migrator.archive.repository import Repository, SetInfo, open_archive
from migrator.archive.retention import Policy, PruneReport, prune, select
from migrator.archive.writer import SetWriter, StoreWriter, UnitWriter

__all__ = ["ArchiveDamaged", "ArchiveFile", "ArchiveReader", "CheckReport", "Cut",
           "FileEntry", "Manifest", "Policy", "PruneReport", "Repository", "SetInfo",
           "SetWriter", "StoreWriter", "UnitRecord", "UnitWriter", "archive_endpoint",
           "check", "is_archive_url", "open_archive", "prune", "select"]
