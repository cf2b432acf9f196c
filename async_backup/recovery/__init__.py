"""recovery/: a lost or damaged cache rebuilt from what S3 proves, and the names in use read back.

Moved here from cache/ and backup/; the following commits split it by topic.

May import report/, cache/, s3/, disk/, settings/ and errors. Must not import backup/, verify/,
restore/ or cli.
"""
