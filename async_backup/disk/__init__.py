"""The local side: the sorted walk, object keys for local paths, the cache directory's lock."""
