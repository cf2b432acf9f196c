"""What a file's first bytes say it is: the kind recorded per cache row, so that an image whose
changed bytes no longer look like an image is seen (files encrypted in place lose their signature).

Owns the signatures and `kind_of`. Pure: imports nothing of the package, reads no file (the upload
hands it the first bytes of the read it does anyway).
"""

from __future__ import annotations

# Bytes the longest signature needs: the JPEG 2000 signature box (12 bytes).
HEAD_BYTES = 12

TIFF = "tiff"
BIGTIFF = "bigtiff"
JPEG = "jpeg"
JP2 = "jp2"  # a JP2/JPX file: the signature box
J2K = "j2k"  # a bare JPEG 2000 codestream
PNG = "png"
PDF = "pdf"
OTHER = "other"

# (signature, kind), longest first where one is a prefix of another's.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", JP2),  # ISO/IEC 15444-1 annex I.5.1
    (b"\x89PNG\r\n\x1a\n", PNG),  # PNG spec 5.2
    (b"II*\x00", TIFF),  # TIFF 6.0 header: byte order, then 42
    (b"MM\x00*", TIFF),
    (b"II+\x00", BIGTIFF),  # BigTIFF: 43 instead of 42
    (b"MM\x00+", BIGTIFF),
    (b"\xff\x4f\xff\x51", J2K),  # SOC then SIZ marker
    (b"\xff\xd8\xff", JPEG),  # SOI, then any marker
    (b"%PDF-", PDF),
)

# The kinds a file of the archive is an image (or a scan's PDF) by: one that turns OTHER was
# most likely encrypted or overwritten, not edited.
KNOWN_KINDS = frozenset({TIFF, BIGTIFF, JPEG, JP2, J2K, PNG, PDF})


def kind_of(head: bytes) -> str:
    """The kind the first bytes of a file show (at least HEAD_BYTES of them where the file has
    that many); OTHER for anything else, an empty file included."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    return OTHER


def lost_signature(was: str | None, now: str) -> bool:
    """Whether a file recorded as a known kind now shows none. A row without a kind (written
    before kinds were kept) is unknown: no alarm."""
    return was in KNOWN_KINDS and now == OTHER
