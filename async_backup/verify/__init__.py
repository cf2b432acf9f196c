"""The verify command: the cache held against S3 and the disk."""
