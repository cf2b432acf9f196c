"""verify/: the verify command: each target's bucket held against the cache and the disk.

Owns the comparison rules (`compare`: pure), the listing spilled to disk (`spill`) and the run
with `--repair` and the report (`command`, the only module here that opens task groups).

May import every lower layer (report/, cache/, s3/, disk/, settings/, errors). Must not import
backup/, restore/ or cli: what it shares with them lives in a lower layer.
"""
