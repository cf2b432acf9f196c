"""cache/: what S3 has confirmed, kept locally in SQLite; the only package that imports sqlite3.

Owns the store (`store`: schema, reads, `apply`, sqlite3 errors mapped to FatalError), its one
writer task (`writer`: what a run's stages learn) and the one facade for every other write
(`writes`: each committed at once), the row type and its comparison with a disk file (`records`:
pure), scratch databases for large listings (`spill`; a rebuild's bucket listing: `listing`), reading
a downloaded snapshot of the cache (`snapshotdb`) and one of the old script's caches (`legacy`),
and restore's log of retrieval requests (`restores`, a file of its own). It stores and reads
rows; what a rebuild takes from S3, the disk or the old script is decided in recovery/.

Imports `errors` and `disk` (entries, the cache directory's checks). Must not import s3/,
report/, recovery/ or any command.
"""
