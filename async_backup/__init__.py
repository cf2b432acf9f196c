"""async-backup: nightly backup of large image archives to versioned S3 Deep Archive buckets."""

__version__ = "0.1.0"
