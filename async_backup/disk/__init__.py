"""disk/: the local side: the sorted walk, object keys for local paths, the cache directory's lock.

Owns what the walk yields (`entries`: pure data), the walk itself (`walk`: scandir in path-byte
order, holes, exclusions, a folder's device), keys (`keys`: path <-> key, pure) and the lock
(`lock`). OSError from scanning is turned into failures and holes here.

Imports only `errors`. Must not import settings/, s3/, cache/, report/ or any command.
"""
