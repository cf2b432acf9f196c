"""s3/: the only package that talks to S3.

Owns the aiobotocore adapter (`client`: the one place botocore's exceptions become S3Error or
FatalError), the hand-signed PutObject/UploadPart fast path (`fastput`: aiohttp's exceptions mapped
the same way), bucket set-up (`buckets`), and the pure pieces the adapter speaks in: checksums
(`checksums`), what S3 tells about objects and the metadata we write (`objects`), and S3's prices
(`pricing`).

Imports `errors` and `settings` only. Must not import disk/, cache/, report/ or any command;
nothing outside s3/ may import aiobotocore or botocore, and only report/notify aiohttp.
"""
