"""Fixity: whether the files on disk and their copies in S3 are still the bytes that were backed up.

`check` (one file read on disk, one object's HeadObject, compared with the cache), `rotation`
(a target's slice within its budget, or a whole pass), `command` (`async-backup fixity`). The
backup runs a slice after its uploads through `rotation`; it never imports `command`.
"""
