"""restore/: the restore command: versions chosen, Deep Archive retrievals asked for, downloads
checked against the stored checksum and placed.

Owns choosing, estimating, requesting and downloading (`command`).

May import every lower layer (report/, cache/, s3/, disk/, settings/, errors). Must not import
backup/, verify/ or cli: what it shares with them lives in a lower layer.
"""
