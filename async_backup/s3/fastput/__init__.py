"""fastput/: PutObject and UploadPart without botocore's per-request machinery.

`sending` holds the fast path's client (DirectPut) and its retry loop. Must not import botocore
or aiobotocore: client.py hands over what it needs.
"""
