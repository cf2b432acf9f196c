"""The mapping between local paths (bytes) and S3 object keys (text), both ways.

Owns the key encoding. A path whose bytes are valid UTF-8 and hold no control characters and
no U+FFFE or U+FFFF is stored under its plain key: the absolute path without the leading "/", as
the existing script did, so a restore can put each file back where it was. Any other path is
stored under an escaped key: "/" followed by the path with "%", control characters, U+FFFE,
U+FFFF and bytes that are not UTF-8 written as %XX (a character as its UTF-8 bytes). No plain key
can start with "/", so the two forms never collide and both reverse exactly. Every escaped key
holds only characters XML 1.0 can carry, so DeleteObjects and listings can name it.
Imports nothing of S3 or the filesystem.
"""

from __future__ import annotations

import re

# S3 keys are limited to 1,024 bytes of UTF-8 [S3 user guide, "Naming Amazon S3 objects"].
MAX_KEY_BYTES = 1024
ESCAPED_KEY_MARK = "/"

# C0 controls and DEL: legal in S3 keys, but they break XML listings and some servers
# (moto answers 404), so such names take the escaped form. U+FFFE and U+FFFF are outside XML 1.0's
# Char production, so no DeleteObjects body can name them (refused as malformed XML; moto answers 500);
# they are the only such code points valid UTF-8 can hold besides the controls (XML 1.0 allows
# tab, LF and CR, escaped here all the same since the first release). Surrogates never decode
# from valid UTF-8: a path holding their bytes is not UTF-8 and is escaped byte by byte.
_NEEDS_ESCAPE = re.compile("[\x00-\x1f\x7f\ufffe\uffff]")
_NOT_XML = frozenset({0xFFFE, 0xFFFF})
_NOT_XML_ESCAPED = ("%EF%BF%BE", "%EF%BF%BF")  # "%" itself is escaped, so only these make them
# What releases before the XML rule escaped: keys of names with only U+FFFE/U+FFFF were plain.
_OLD_CONTROL = re.compile("[\x00-\x1f\x7f]")
_ESCAPE_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")


class KeyTooLongError(ValueError):
    """The key for this path exceeds S3's 1,024-byte limit."""


def key_for_path(path: bytes) -> str:
    """The object key for an absolute local path given as bytes."""
    relative = path[1:] if path.startswith(b"/") else path
    try:
        text = relative.decode("utf-8")
    except UnicodeDecodeError:
        return _escaped_key(relative)
    if _NEEDS_ESCAPE.search(text) is not None:
        return _escaped_key(relative)
    return text


def path_for_key(key: str) -> bytes:
    """The absolute local path (bytes) that `key` was made from; the inverse of key_for_path."""
    if not key.startswith(ESCAPED_KEY_MARK):
        return b"/" + key.encode("utf-8")
    raw = key[len(ESCAPED_KEY_MARK) :].encode("utf-8")
    return b"/" + _ESCAPE_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def superseded_key(path: bytes, key: str) -> str | None:
    """The key releases before U+FFFE and U+FFFF were escaped (and the old script) gave `path`,
    when it differs from its current `key`: an object may still be stored under it. None for
    every other path; a substring test unless the key holds an escaped U+FFFE or U+FFFF."""
    if not key.startswith(ESCAPED_KEY_MARK) or not any(e in key for e in _NOT_XML_ESCAPED):
        return None
    relative = path[1:] if path.startswith(b"/") else path
    try:
        text = relative.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _OLD_CONTROL.search(text) is None:
        return text  # plain before
    old = _escaped_key(relative, xml_safe=False)
    return old if old != key else None


def check_key_length(key: str) -> None:
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise KeyTooLongError(f"object key is {size:,} bytes; S3 allows at most {MAX_KEY_BYTES:,}")


def display_path(path: bytes) -> str:
    """Text for logs and cards: undecodable bytes shown as \\xNN, never an encoding error."""
    return path.decode("utf-8", "backslashreplace")


def _escaped_key(relative: bytes, *, xml_safe: bool = True) -> str:
    text = relative.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, carried as a lone surrogate
            out.append(f"%{code - 0xDC00:02X}")
        elif ch == "%" or code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        elif xml_safe and code in _NOT_XML:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return ESCAPED_KEY_MARK + "".join(out)
