"""settings/: what the operator configured, read and checked before any I/O against S3.

Owns config.json (`config`: frozen dataclasses, every problem a ConfigError), the bucket naming
rules (`naming`: stable and legacy names, S3's checks on a name; pure), and targets (`targets`:
folders and roots' subfolders with their buckets, collisions, selection by --only / --target).

Imports only `errors`. Must not import disk/, s3/, cache/, report/ or any command.
"""
