"""cache/: what S3 has confirmed, kept locally in SQLite; the only package that imports sqlite3.

Owns the store (`store`: schema, reads, `apply`, sqlite3 errors mapped to FatalError), its one
writer task (`writer`), the row type and its comparison with a disk file (`records`: pure),
scratch databases for large listings (`spill`), the old script's caches (`legacy`), rebuilding
rows from S3 (`rebuild`), the snapshots of the cache in S3 (`snapshot`) and restore's log of
retrieval requests (`restores`, a file of its own).

Imports `errors`, `settings`, `disk` and `s3`. Must not import report/ or any command.
"""
