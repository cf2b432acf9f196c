"""What S3 has confirmed: the local SQLite cache, the old script's cache, rebuilding from S3."""
