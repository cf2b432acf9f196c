"""verify/: the verify command: each target's bucket held against the cache and the disk.

Owns the comparison rules, `--repair` and verify's report (`command`).

May import every lower layer (report/, cache/, s3/, disk/, settings/, errors). Must not import
backup/, restore/ or cli: what it shares with them lives in a lower layer.
"""
