"""Real file systems for the tests that depend on how one behaves: loop-mounted ext2 and ext4 images.

ext2 keeps whole seconds on disk (the kernel hands out coarse mtimes there, as NFS and older ext4/xfs
kernels do), and a second image mounted inside a first one is a share mounted inside a target. Only
root can mount: elsewhere every test that asks for one is skipped with the reason.

    with loop_mount(tmp_path / "fs", "ext2") as mounted:   # a pathlib.Path, the mount point
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "loop mounts need root (run the suite as root to test on real ext2/ext4)"
    for tool in ("mkfs.ext2", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: e2fsprogs, mount)"
    return None


def skip_unless_mountable() -> None:
    """Skip the calling test, with the reason, where loop mounts cannot be made."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def loop_mount(mount_point: Path, fs_type: str = "ext2", size_mib: int = 64) -> Iterator[Path]:
    """Make an image of `fs_type`, loop-mount it on `mount_point` (created), yield the mount point,
    and unmount it afterwards, also when the test failed. Skips the test where it cannot be done."""
    skip_unless_mountable()
    mount_point = Path(mount_point)
    mount_point.mkdir(parents=True, exist_ok=True)
    image = _image_for(mount_point, fs_type)
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    made = subprocess.run([f"mkfs.{fs_type}", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.{fs_type} failed: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        image.unlink(missing_ok=True)
        pytest.skip(f"cannot loop-mount {fs_type} here: {mounted.stderr.strip()}")
    try:
        # mkfs leaves lost+found: tests want an empty file system, as a fresh share would be.
        shutil.rmtree(mount_point / "lost+found", ignore_errors=True)
        os.chmod(mount_point, 0o755)
        yield mount_point
    finally:
        unmount(mount_point)
        image.unlink(missing_ok=True)


def unmount(mount_point: Path) -> None:
    """Unmount if mounted (a test may have unmounted it already); lazily when it is busy."""
    if not os.path.ismount(mount_point):
        return
    done = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, text=True)


def remount(mount_point: Path, fs_type: str = "ext2") -> None:
    """Mount again the image `loop_mount` made for `mount_point` (a share that comes back)."""
    image = _image_for(Path(mount_point), fs_type)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True, capture_output=True)


def _image_for(mount_point: Path, fs_type: str) -> Path:
    """Where the image of a mount point lies: outside every tree a test backs up (an image beside its
    mount point would lie inside the target the test builds around it)."""
    folder = Path(tempfile.gettempdir()) / "async-backup-loopfs"
    folder.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256(os.fsencode(mount_point.absolute())).hexdigest()[:16]
    return folder / f"{digest}.{fs_type}.img"


# FS_IOC_FIEMAP (linux/fs.h) and its structs (linux/fiemap.h): a file's extents on its device.
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # fe_logical, fe_physical, fe_length, 2 reserved, fe_flags, 3 reserved


def rot_beneath(mount_point: Path, path: Path, fs_type: str = "ext2") -> None:
    """Flip one byte of `path` in the image under the mounted file system, as a failing disk does:
    the file system never sees a write, so size, mtime and ctime stay as they were. The page cache
    is dropped after, so the next read comes from the (rotten) image."""
    with open(path, "rb") as f:
        request = _FIEMAP_HEADER.pack(0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, 1, 0) + bytes(_FIEMAP_EXTENT.size)
        reply = bytearray(request)
        fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, reply)  # filled in place
    mapped = _FIEMAP_HEADER.unpack_from(reply)[3]
    assert mapped >= 1, f"{path} has no extent on its device"
    logical, physical, length = _FIEMAP_EXTENT.unpack_from(reply, _FIEMAP_HEADER.size)[:3]
    assert logical == 0 and length > 0
    at = physical + min(length, os.path.getsize(path)) // 2
    with open(_image_for(Path(mount_point), fs_type), "r+b") as image:
        image.seek(at)
        byte = image.read(1)
        image.seek(at)
        image.write(bytes([byte[0] ^ 0xFF]))
        image.flush()
        os.fsync(image.fileno())
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
