"""recovery/: what a lost or damaged cache gets back from S3, and the bucket names in use.

Owns the pure rules of which row is taken from which proof (`rules`), a bucket's rebuild sources
(`rebuild`: the listing checked against snapshot rows, HeadObject's candidates; `shares`: absent
shares, where a missing file proves no delete), the snapshots of the cache in S3 (`snapshots`:
bucket, keys, packing, finding, downloading; `save`: the upload after a run), the old script's
caches (`oldscript`: where they lie, adopting their rows, the stop beside an old installation),
the names in use read back before naming (`names`, `recall`) and AWS account-tagged default
names (`accountnames`), and the rebuild run during a backup (`run`, which takes a
`target.RecoveringRun`). cache/ stores and reads the rows; every SQLite read is there.

May import report/, cache/, s3/, disk/, settings/ and errors. Must not import backup/, verify/,
restore/ or cli (the commands call it).
"""
