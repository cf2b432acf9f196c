"""fastput/: PutObject and UploadPart without botocore's per-request machinery.

Split by topic: `signing` (SigV4 by hand, byte for byte botocore's), `bodies` (how a body reaches
the socket: slices of the caller's memory, or a file range streamed through two buffers) and
`sending` (DirectPut: one PUT, retried like botocore's standard mode). client.py chooses, per
request, between this path and botocore's. Nothing here may import botocore or aiobotocore:
client.py hands over the credentials, endpoints and TLS settings.
"""
