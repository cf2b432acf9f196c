"""disk/: the local side: the sorted walk, object keys for local paths, the cache directory's lock,
consistent reads of the files to upload.

Owns what the walk yields (`entries`: pure data), the walk itself (`walk`: scandir in path-byte
order, holes, exclusions, a folder's device), keys (`keys`: path <-> key, pure), the lock
(`lock`) and reading files for upload (`read`: consistent whole reads, checksum passes, the chunk
reader of streamed bodies). OSError from scanning and reading is turned into failures, holes and
our own file errors (FileVanished, FileChanged, FileUnreadable) here.

Imports only `errors`. Must not import settings/, s3/, cache/, report/ or any command.
"""
