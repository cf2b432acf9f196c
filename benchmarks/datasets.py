"""Deterministic (seeded) source trees for the benchmark, and the incremental change applied to one.

Owns: the sizes of each data set per size profile, generating trees under a work dir, checking that a
tree is in its base state (and repairing it after an interrupted run), the incremental mutation
(modify / delete / add a fraction of files) and its undo, and walking a tree into the listing a
bucket should hold. Imports nothing from the harness.

Contents are incompressible (like JPEG/RAW images): slices of one seeded random pool, each file
prefixed with its own index so no two files are equal.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
POOL_BYTES = 8 * MIB
CHANGE_FRACTION = 0.01  # incremental: 1 % modified, 1 % deleted, 1 % added
ADDED_PREFIX = "added-"
# Base files get fixed old mtimes (an archive's photos are old; and a tree generated a second before the
# first upload would otherwise tie with the server's LastModified and make --update style tools resend).
BASE_MTIME = 1_600_000_000  # 2020-09-13


@dataclass(frozen=True)
class Sizes:
    small_files: int
    small_dirs: int
    small_min_bytes: int
    small_max_bytes: int
    large_files: int
    large_bytes: int
    big_files: int
    big_dirs: int
    big_min_bytes: int
    big_max_bytes: int
    # Scanned pages: sizes spread evenly on a log scale (as many 300 KiB pages as 30 MiB scans).
    pages_files: int = 250
    pages_dirs: int = 10
    pages_min_bytes: int = 256 * KIB
    pages_max_bytes: int = 48 * MIB

    def scaled(self, factor: float) -> Sizes:
        """``--scale``: multiply file counts (not file sizes); directory counts grow with them."""
        if factor == 1:
            return self
        return replace(
            self,
            small_files=max(1, round(self.small_files * factor)),
            small_dirs=max(1, round(self.small_dirs * factor)),
            large_files=max(1, round(self.large_files * factor)),
            big_files=max(1, round(self.big_files * factor)),
            big_dirs=max(1, round(self.big_dirs * factor)),
            pages_files=max(1, round(self.pages_files * factor)),
            pages_dirs=max(1, round(self.pages_dirs * factor)),
        )


PROFILES: dict[str, Sizes] = {
    # issue 5's sizes
    # issue 5's sizes; pages: issue 13's 250 files of 256 KiB-48 MiB (about 2.3 GB)
    "full": Sizes(5000, 50, 8 * KIB, 64 * KIB, 6, 96 * MIB, 200_000, 400, 512, 2 * KIB),
    # minutes, not hours
    "quick": Sizes(1000, 20, 8 * KIB, 64 * KIB, 2, 32 * MIB, 20_000, 40, 512, 2 * KIB, 60, 4, 256 * KIB, 24 * MIB),
    # the smoke test: seconds; large files still above every tool's multipart threshold but rclone's
    "tiny": Sizes(60, 5, 8 * KIB, 64 * KIB, 2, 12 * MIB, 400, 4, 512, 2 * KIB, 8, 2, 128 * KIB, 20 * MIB),
}


@dataclass(frozen=True)
class Mutation:
    modified: tuple[str, ...]
    deleted: tuple[str, ...]
    added: tuple[str, ...]

    def changed_count(self) -> int:
        return len(self.modified) + len(self.deleted) + len(self.added)


class Generator:
    def __init__(self, root: Path, sizes: Sizes, seed: int) -> None:
        self.root = root.resolve()
        self.sizes = sizes
        self.seed = seed
        self._pool = random.Random(seed).randbytes(POOL_BYTES)

    # --- paths ------------------------------------------------------------------------------------
    def tree(self, name: str) -> Path:
        return self.root / name

    def _small_files(self) -> Iterator[tuple[Path, int]]:
        s = self.sizes
        rng = random.Random(f"{self.seed}-small-sizes")
        for i in range(s.small_files):
            size = rng.randint(s.small_min_bytes, s.small_max_bytes)
            yield self.tree("small") / f"d{i % s.small_dirs:04d}" / f"img{i:07d}.jpg", size

    def _big_files(self) -> Iterator[tuple[Path, int]]:
        s = self.sizes
        rng = random.Random(f"{self.seed}-big-sizes")
        for i in range(s.big_files):
            size = rng.randint(s.big_min_bytes, s.big_max_bytes)
            yield self.tree("big") / f"d{i % s.big_dirs:04d}" / f"t{i:08d}.jpg", size

    def _pages_files(self) -> Iterator[tuple[Path, int]]:
        s = self.sizes
        rng = random.Random(f"{self.seed}-pages-sizes")
        low, high = math.log(s.pages_min_bytes), math.log(max(s.pages_min_bytes, s.pages_max_bytes))
        for i in range(s.pages_files):
            size = round(math.exp(rng.uniform(low, high)))
            yield self.tree("pages") / f"vol{i % s.pages_dirs:03d}" / f"page{i:05d}.tif", size

    def _rel(self, path: Path) -> str:
        """A file's identity for its content: relative, so the same seed gives the same bytes anywhere."""
        return str(path.relative_to(self.root))

    # --- content ----------------------------------------------------------------------------------
    def _content(self, ident: str, size: int) -> bytes:
        head = hashlib.sha256(f"{self.seed}:{ident}".encode()).digest()
        start = int.from_bytes(head[:4], "big") % (POOL_BYTES - size) if size < POOL_BYTES else 0
        if size > POOL_BYTES:
            return (head + random.Random(ident).randbytes(size))[:size]
        return (head + self._pool[start : start + size])[:size]

    def _write(self, path: Path, size: int, ident: str, old: bool = True) -> None:
        """Write a file; ``old`` ones get a fixed mtime, changed ones keep the time they were written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(self._content(ident, size))
        if old:
            t = BASE_MTIME + int.from_bytes(hashlib.sha256(ident.encode()).digest()[:3], "big")
            os.utime(path, (t, t))

    # --- trees ------------------------------------------------------------------------------------
    def _marker(self, name: str) -> Path:
        return self.root / f".{name}.complete"

    def _params(self, name: str) -> str:
        # Only the pages tree depends on the pages_* sizes: other trees generated before they existed stay valid.
        sizes = {k: v for k, v in asdict(self.sizes).items() if name == "pages" or not k.startswith("pages_")}
        return json.dumps(
            {"name": name, "seed": self.seed, "sizes": sizes, "mtime": BASE_MTIME, "content": 2},
            sort_keys=True,
        )

    def ensure(self, name: str) -> Path:
        """Make tree ``name`` exist in its base state (generate, or repair a half-done mutation)."""
        marker = self._marker(name)
        tree = self.tree(name)
        if marker.exists() and marker.read_text() == self._params(name):
            if name == "small":
                self._repair_small()
            return tree
        if tree.exists():
            shutil.rmtree(tree)
        marker.unlink(missing_ok=True)
        if name == "small":
            for path, size in self._small_files():
                self._write(path, size, self._rel(path))
        elif name == "big":
            for path, size in self._big_files():
                self._write(path, size, self._rel(path))
        elif name == "pages":
            for path, size in self._pages_files():
                self._write(path, size, self._rel(path))
        elif name == "large":
            for i in range(self.sizes.large_files):
                path = tree / f"scan{i:03d}.tif"
                self._write(path, self.sizes.large_bytes, self._rel(path))
        else:
            raise ValueError(f"unknown tree {name!r}")
        marker.write_text(self._params(name))
        return tree

    def _repair_small(self) -> None:
        expected = {path: size for path, size in self._small_files()}
        for path, size in expected.items():
            try:
                ok = path.stat().st_size == size
            except FileNotFoundError:
                ok = False
            if not ok:
                self._write(path, size, self._rel(path))
        for path in self.tree("small").rglob(f"{ADDED_PREFIX}*"):
            path.unlink()

    def mutate_small(self, rep: int) -> Mutation:
        """Modify, delete and add ``CHANGE_FRACTION`` of the small tree's files (seeded by ``rep``)."""
        files = list(self._small_files())
        n = max(1, round(len(files) * CHANGE_FRACTION))
        rng = random.Random(f"{self.seed}-mutate-{rep}")
        picked = rng.sample(range(len(files)), min(len(files), 2 * n))
        modified, deleted, added = [], [], []
        for i in picked[:n]:
            path, size = files[i]
            # A new size as well as new bytes, so tools that compare size and mtime all see the change.
            new_size = size + rng.randint(1, 4 * KIB)
            self._write(path, new_size, f"{self._rel(path)}-modified-{rep}", old=False)
            modified.append(str(path))
        for i in picked[n:]:
            path, _size = files[i]
            path.unlink()
            deleted.append(str(path))
        for j in range(n):
            d = self.tree("small") / f"d{rng.randrange(self.sizes.small_dirs):04d}"
            path = d / f"{ADDED_PREFIX}{rep:02d}-{j:05d}.jpg"
            size = rng.randint(self.sizes.small_min_bytes, self.sizes.small_max_bytes)
            self._write(path, size, f"{self._rel(path)}-added-{rep}", old=False)
            added.append(str(path))
        return Mutation(tuple(modified), tuple(deleted), tuple(added))

    def restore_small(self) -> None:
        self._repair_small()


def listing(tree: Path) -> dict[str, int]:
    """What a bucket should hold for ``tree``: object key (absolute path without the leading '/') -> size."""
    out: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(tree):
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            out[key_for(path)] = os.stat(path).st_size
    return out


def key_for(path: str | Path) -> str:
    return str(Path(path).resolve()).lstrip("/")


def read_through(tree: Path, chunk_bytes: int = 1024 * 1024) -> int:
    """Read every file of ``tree`` once, so the run that follows finds it in the page cache.

    Without it, whoever ran first after the kernel had dropped a tree read it from disk: here the
    large and pages trees took 3.3 s to read cold and 0.4 s warm, which is more than the gap
    between the tools being compared. Returns the bytes read."""
    total = 0
    buf = bytearray(chunk_bytes)
    for dirpath, _dirnames, filenames in os.walk(tree):
        for fn in filenames:
            with open(os.path.join(dirpath, fn), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total
