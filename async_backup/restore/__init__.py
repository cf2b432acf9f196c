"""restore/: the restore command: versions chosen, Deep Archive retrievals asked for, downloads
checked against the stored checksum and placed.

Owns choosing versions (`choose`: pure), checksums while streaming (`checksum`: pure), the
versions spilled to disk (`spill`), placing a file (`place`), and the run (`command`, the only
module here that opens task groups).

May import every lower layer (report/, cache/, s3/, disk/, settings/, errors). Must not import
backup/, verify/ or cli: what it shares with them lives in a lower layer.
"""
