"""cache/: what S3 has confirmed, kept locally in SQLite; the only package that imports sqlite3.

Owns the store (`store`: schema, reads, `apply`, sqlite3 errors mapped to FatalError), its one
writer task (`writer`), the row type and its comparison with a disk file (`records`: pure),
scratch databases for large listings (`spill`), the old script's caches (`legacy`), rebuilding
rows from S3 (`rebuild`) and the snapshots of the cache in S3 (`snapshot`).

Imports `errors`, `settings`, `disk` and `s3`. Must not import report/ or any command.
"""
