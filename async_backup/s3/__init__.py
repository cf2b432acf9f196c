"""The only package that talks to S3: the aiobotocore adapter, the hand-signed fast path, bucket set-up, prices."""
