"""s3/: the only package that talks to S3.

Owns the aiobotocore adapter (`client`: botocore's exceptions become S3Error or FatalError there,
and it chooses per request between botocore and the fast path), the hand-signed PutObject/UploadPart
fast path (`fastput/`: signing, bodies, sending), the one error map both paths share (`errormap`:
which codes are fatal or retried, and every failure's message), bucket set-up (`buckets`), and the
pure pieces the adapter speaks in: checksums (`checksums`), what S3 tells about objects and the
metadata we write (`objects`), and S3's prices (`pricing`).

Imports `errors` and `settings` only. Must not import disk/, cache/, report/ or any command;
nothing outside s3/ may import aiobotocore or botocore, and only report/notify aiohttp.
"""
