"""Request bodies reach the socket as views of the caller's buffer, in slices, never copied whole."""

from __future__ import annotations

import anyio

from async_backup.s3.fastput.bodies import BODY_SLICE_BYTES, SlicedBody


class RecordingWriter:
    def __init__(self) -> None:
        self.chunks: list[memoryview] = []

    async def write(self, chunk: memoryview) -> None:
        self.chunks.append(chunk)


def test_a_body_is_written_as_views_of_the_buffer_in_slices() -> None:
    buffer = bytearray(range(256)) * (BODY_SLICE_BYTES // 256 * 3 + 1)
    body = SlicedBody(memoryview(buffer))
    assert body.size == len(buffer)
    writer = RecordingWriter()
    anyio.run(body.write_with_length, writer, None)  # type: ignore[arg-type]
    assert all(isinstance(c, memoryview) and c.obj is buffer for c in writer.chunks)  # no copies
    assert max(len(c) for c in writer.chunks) == BODY_SLICE_BYTES and len(writer.chunks) == 4
    assert b"".join(writer.chunks) == buffer
    clipped = RecordingWriter()
    anyio.run(body.write_with_length, clipped, 1000)  # type: ignore[arg-type]
    assert b"".join(clipped.chunks) == buffer[:1000]
