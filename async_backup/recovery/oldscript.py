"""Adopting the old script's cache: its local db/ files, and its copies in its cache bucket.

Also owns the stop before a run that would start new buckets beside an old script's
installation by mistake (no "naming" in config.json while this cache directory holds the old
script's db/ caches, here or as its copies in `image-backup-cache`).

Owns finding a legacy-named target's old cache (on disk, else the copy the old script left in
`image-backup-cache`), adopting its rows against the bucket listing, the warning about the
config.json copy (AWS keys included) the old script left in that bucket, and, in a dry run,
planning against the old cache a real run would adopt; and where the old script keeps its
caches (`db/<quote_plus(name)>.db` in its cache directory) and the bucket it copies its cache
directory to (`image-backup-cache`, config.json with the AWS keys included). Reads the old SQLite
files only through `cache.legacy`.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..cache.legacy import OldCache, OldCacheError
from ..cache.listing import Listing
from ..cache.records import Listed, Recorded, stat_float_mtime
from ..cache.store import StateStore
from ..cache.writes import CacheWrites
from ..disk.digest import content_proves_etag, etag_part_sizes, multipart_etag, old_part_bytes, single_part_md5
from ..disk.keys import ESCAPED_KEY_MARK, key_for_path, path_for_key
from ..errors import ConfigError, Failure, FailureCollector, FailureKind, S3Error
from ..s3.client import S3
from ..settings.config import Config
from ..settings.naming import legacy_bucket_of
from ..wording import counted
from .rebuild import needs_rebuild
from .rules import OLD_UPLOAD_MARGIN_S, old_row_predates_upload, under_root
from .target import RecoveringRun

log = logging.getLogger(__name__)

# Where the old script keeps a target's cache, relative to its cache directory.
LEGACY_DB_DIR = "db"
# The old script copies its whole cache directory here after every run, config.json included.
LEGACY_CACHE_BUCKET = "image-backup-cache"


def old_cache_name(name: str) -> str:
    """A target's cache relative to the old script's cache directory: the name before cleaning,
    quote_plus-ed (`db/archives%2FArchive+3.db`)."""
    return f"{LEGACY_DB_DIR}/{urllib.parse.quote_plus(name)}.db"


def old_cache_files(cache_dir: Path) -> list[str]:
    """The old script's caches in a cache directory (`db/*.db` file names): the mark of its installation."""
    try:
        return sorted(p.name for p in (cache_dir / LEGACY_DB_DIR).glob("*.db") if p.is_file())
    except OSError:
        return []


def old_target_name(cache_file: str) -> str:
    """The target name an old cache file is named after (`archives%2FArchive+3.db` -> `archives/Archive 3`)."""
    return urllib.parse.unquote_plus(cache_file.removesuffix(".db"))


def old_cache_path(cache_dir: Path, name: str) -> Path:
    """Where the old script keeps a target's cache."""
    return cache_dir / old_cache_name(name)


def old_row_mtime(path: bytes, timestamp: float, listed: Listed) -> float | None:
    """The float mtime a row of the old script's cache becomes ours with, or None: held out for
    want of proof (blocking: a worker thread).

    The old script stat'ed each file *after* uploading it, so a file rewritten during its upload
    left a row with the new mtime over the old bytes. A row the file still matches (listed size,
    the same float mtime) is taken where its mtime predates the upload by the margin; else only
    where the file's content has the listed ETag (`content_proves_etag`: the file is read).
    A row the file no longer matches at the listed size is stale (the old script's last run
    changed the file and died before it copied its cache): the content decides too, and where it
    proves the object, the row takes the file's mtime now. Any other row that cannot call the
    file unchanged (gone, another size, content not proven) is taken as it is: it only makes the
    run delete or upload that file, as no row would (and a gone file's object is then deleted,
    not left current for good)."""
    predates = old_row_predates_upload(timestamp, listed)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return timestamp
    except OSError:
        return timestamp if predates else None  # unreadable: no knowledge beyond the row's own
    if not stat.S_ISREG(st.st_mode) or st.st_size != listed.size:
        return timestamp
    now = stat_float_mtime(st.st_mtime_ns)
    if now == timestamp and predates:
        return timestamp
    if content_proves_etag(path, st.st_size, st.st_mtime_ns, listed.etag)[0]:
        return now
    return timestamp if now != timestamp else None


def adopted_checksum(listed: Listed) -> tuple[str | None, int | None]:
    """The checksum an adopted row records from its listed ETag, in the cache's form, and the part
    size it was built with: a single-part ETag is the body's MD5; a multipart one the MD5 of its
    parts' MD5s at the old script's part size for this size, where that gives the ETag's part
    count. A later content check then compares the file locally, without a HeadObject. (None,
    None): the ETag states nothing computable."""
    md5 = single_part_md5(listed.etag)
    if md5 is not None:
        return f"md5:{md5}", None
    parsed = multipart_etag(listed.etag)
    part_bytes = old_part_bytes(listed.size)
    if parsed is None or not etag_part_sizes(listed.etag, listed.size, [part_bytes]):
        return None, None
    return f"md5:{parsed[0]}-{parsed[1]}", part_bytes


@dataclass(frozen=True, slots=True)
class Adopted:
    """What adopting an old cache did: rows written, and rows held out for want of proof."""

    rows: int = 0
    unproven: int = 0


def rows_from_old_cache(old: OldCache, bucket: str, root: bytes, listing: Listing, writes: CacheWrites) -> Adopted:
    """Adopt the old script's cache: a listed key it holds becomes a row with the listed size and
    the float st_mtime the old script saw (the planner compares at that precision), where
    `old_row_mtime` says so. Keys taken are marked covered; a row held out stays uncovered, for
    the listing's own proof (a HeadObject, a gone row) and else an upload. A key the old cache
    holds but S3 does not list stays out: its file is uploaded. Runs in a worker thread of the
    event loop, which writes the rows (`writes`)."""
    written = 0
    unproven = 0
    for chunk in iter_chunks(listing):
        # The old script's keys are str(path).lstrip("/"); keys in our escaped form are ours.
        listed = {"/" + e.key: e for e in chunk if not e.key.startswith(ESCAPED_KEY_MARK)}
        stamps = old.lookup(list(listed))
        rows = []
        for old_key, ts in stamps.items():
            path = path_for_key(old_key[1:])
            if not under_root(path, root):
                continue
            mtime = old_row_mtime(path, ts, listed[old_key])
            if mtime is not None:
                rows.append((path, listed[old_key].size, mtime, *adopted_checksum(listed[old_key])))
            else:
                unproven += 1
        if rows:
            written += anyio.from_thread.run(writes.adopted, bucket, rows)
            listing.cover([key_for_path(row[0]) for row in rows])
    return Adopted(written, unproven)


def iter_chunks(listing: Listing, limit: int = 1000) -> Iterator[list[Listed]]:
    after = ""
    while chunk := listing.uncovered(after, limit):
        yield chunk
        after = chunk[-1].key


class OldCaches:
    def __init__(self, config: Config, store: StateStore, collector: FailureCollector) -> None:
        self.config = config
        self.store = store
        self.collector = collector
        self._old_cache_bucket_keys: list[str] = []  # keys in the old script's cache bucket
        self._old_buckets: list[str] = []  # the old script's buckets found holding a target's files
        self._copied_from: dict[Path, str] = {}  # a fetched copy's local path -> its URL in that bucket

    def of(self, run: RecoveringRun) -> Path | None:
        """The old script's cache of a legacy-named target, if it left one."""
        if run.target.legacy_name is None:
            return None
        # config.json's folder, not the store's: a dry run with --reset reads an empty stand-in store.
        path = old_cache_path(self.config.source.parent, run.target.legacy_name)
        return path if path.is_file() else None

    def to_adopt(self, run: RecoveringRun) -> Path | None:
        """For a dry run: the old cache a real run would adopt (the cache holds no rows for it yet)."""
        path = self.of(run)
        return path if path is not None and needs_rebuild(self.store, run.target.bucket) else None

    def recorded(self, run: RecoveringRun) -> Iterator[Recorded]:
        """The cache's rows for the target, or in a dry run the old script's cache it would adopt."""
        if run.old_cache is None:
            yield from self.store.recorded(run.target.bucket)
            return
        old = OldCache(run.old_cache)
        try:
            for row in old.rows():
                yield Recorded(row.path, None, round(row.timestamp * 1e9), row.timestamp)
        finally:
            old.close()

    def adopt(self, run: RecoveringRun, path: Path, listing: Listing, writes: CacheWrites) -> int:
        """Adopt the old script's cache of the target, checked against the listing (worker thread).
        An old cache that cannot be read is one warning: its files are then treated as new."""
        target = run.target
        try:
            old = OldCache(path)
        except OldCacheError as exc:
            log.warning("old cache of %s: %s; its files are treated as new", target.path, exc)
            return 0
        try:
            old_rows = old.count()
            adopted = rows_from_old_cache(old, target.bucket, target.path_bytes, listing, writes)
        except OldCacheError as exc:
            log.warning("old cache of %s: %s; what it did not yield is treated as new", target.path, exc)
            return 0
        finally:
            old.close()
        missing = old_rows - adopted.rows - adopted.unproven
        unproven = (
            f"; {adopted.unproven} not taken: written within {OLD_UPLOAD_MARGIN_S // 60} minutes of their upload "
            "(the old script recorded the mtime after uploading) and not proven by the ETag, so uploaded "
            "unless HeadObject proves them"
            if adopted.unproven
            else ""
        )
        log.info(
            "%s: adopted %d of %s from the old cache %s (checked against %d ListObjectsV2 pages)%s%s",
            target.path,
            adopted.rows,
            counted(old_rows, "file"),
            path,
            listing.requests,
            f"; {missing} are not in s3://{target.bucket} and are uploaded if still on disk" if missing else "",
            unproven,
        )
        return adopted.rows

    async def read_bucket(self, s3: S3) -> None:
        """List the old script's cache bucket once (a few objects per installation): its copies of
        config.json are warned about, its copies of db/*.db can stand in for lost local ones."""
        found: list[str] = []
        try:
            async for page in s3.list_current(LEGACY_CACHE_BUCKET):
                found.extend(o.key for o in page)
        except S3Error as exc:
            log.debug("bucket %s not read: %s", LEGACY_CACHE_BUCKET, exc)
            return
        self._old_cache_bucket_keys = found
        if self.config.naming == "legacy":
            self._warn_about_old_config_copy(self._config_copies())

    async def find_old_buckets(self, s3: S3, buckets: dict[str, str]) -> None:
        """Which of the old script's buckets for the targets (path -> bucket) hold that target's
        files: one ListObjectsV2 (MaxKeys=1) each. A bucket that is not there, or not ours
        (AccessDenied: names are global on AWS), holds nothing of ours."""
        found: list[str] = []
        for path, bucket in sorted(buckets.items()):
            try:
                if await s3.holds_any(bucket, path.lstrip("/") + "/"):
                    found.append(bucket)
            except S3Error as exc:
                log.debug("bucket %s not read: %s", bucket, exc)
        self._old_buckets = found

    def _config_copies(self) -> list[str]:
        return [k for k in self._old_cache_bucket_keys if k == "config.json" or k.endswith("/config.json")]

    def old_installation(self) -> tuple[list[str], list[str]]:
        """The old script's caches of this cache directory: its local `db/*.db` files, and the
        copies of them it left in its cache bucket (known once `read_bucket` ran; a dry run sends
        no request and sees only the local ones). Two sorted lists of file names."""
        cache_dir = self.config.source.parent
        own = str(cache_dir).lstrip("/") + f"/{LEGACY_DB_DIR}/"
        copies = sorted(
            k[len(own) :]
            for k in self._old_cache_bucket_keys
            if k.startswith(own) and k.endswith(".db") and "/" not in k[len(own) :]
        )
        return old_cache_files(cache_dir), copies

    def check_naming(self) -> None:
        """Beside an old script's installation, a run without "naming" in config.json stops
        before any bucket is made or any file uploaded: it would upload everything again into
        new buckets and leave the old ones behind. A "naming" written out is the operator's choice."""
        if self.config.naming == "legacy":
            return
        local, copies = self.old_installation()
        if not local and not copies and not self._old_buckets:
            return
        names = sorted(set(local) | set(copies))
        buckets = sorted({legacy_bucket_of(old_target_name(n)) for n in names} | set(self._old_buckets))
        shown = ", ".join(buckets[:3]) + (f" and {len(buckets) - 3} more" if len(buckets) > 3 else "")
        cache_dir = self.config.source.parent
        targets = counted(len(names), "target")
        if local:
            where = f"{cache_dir}/{LEGACY_DB_DIR} holds the old script's caches of {targets}"
        elif copies:
            where = f"s3://{LEGACY_CACHE_BUCKET} holds the old script's caches of {targets} of {cache_dir}"
        else:
            where = f"the old script's buckets hold files of {counted(len(self._old_buckets), 'target')}"
        if not self.config.naming_set:
            # The run stops before its report: the exposed keys are said here, not in the summary.
            for warning in self._config_copy_warnings(self._config_copies()):
                log.warning("%s", warning.message)
            raise ConfigError(
                f"{where} (buckets {shown}): set \"naming\": \"legacy\" in backup of config.json to adopt the "
                "existing script's installation, or \"naming\": \"stable\" to start new buckets on purpose"
            )
        self._warn_about_old_config_copy(self._config_copies())
        message = (
            f'{where}; "naming": "{self.config.naming}" is set, so its buckets ({shown}) are left alone and '
            "this run backs up into new buckets"
        )
        self.collector.warn(Failure(FailureKind.ADOPTION, "run", f"{cache_dir}/{LEGACY_DB_DIR}", message))

    async def fetch_copy(self, s3: S3, run: RecoveringRun, tmp: Path) -> Path | None:
        """The old script's cache of the target as it last copied it to its cache bucket, for when
        the local db/ file is gone (a new server): this cache directory's copy first, else the one
        other installation's copy of that name (several: none is chosen, the choice would be a guess)."""
        if run.target.legacy_name is None or not self._old_cache_bucket_keys:
            return None
        name = old_cache_name(run.target.legacy_name)
        own = str(self.config.source.parent).lstrip("/") + "/" + name
        matches = [k for k in self._old_cache_bucket_keys if k == own or k.endswith("/" + name)]
        key = own if own in matches else matches[0] if len(matches) == 1 else None
        if key is None:
            if matches:
                log.warning(
                    "%s: %d copies of the old cache %s in s3://%s, none from this cache directory; none used",
                    run.target.path,
                    len(matches),
                    name,
                    LEGACY_CACHE_BUCKET,
                )
            return None
        dest = tmp / f"old-{run.target.bucket}.db"
        try:
            async with (
                s3.open_object(LEGACY_CACHE_BUCKET, key) as reader,
                await anyio.open_file(dest, "wb") as out,
            ):
                while chunk := await reader.read(1024 * 1024):
                    await out.write(chunk)
        except (S3Error, OSError) as exc:
            log.warning(
                "%s: the old cache s3://%s/%s could not be read (%s)", run.target.path, LEGACY_CACHE_BUCKET, key, exc
            )
            return None
        log.info("%s: no local old cache; using its copy s3://%s/%s", run.target.path, LEGACY_CACHE_BUCKET, key)
        self._copied_from[dest] = f"s3://{LEGACY_CACHE_BUCKET}/{key}"
        return dest

    def describe(self, path: Path) -> str:
        """Where an adopted old cache came from, for the log: the local file, or its copy's URL."""
        return self._copied_from.get(path, str(path))

    def _warn_about_old_config_copy(self, keys: list[str]) -> None:
        """The old script copied config.json, AWS keys included, to its cache bucket after every run.
        Say so once per run (never delete it: it may be someone's only copy of that config)."""
        for warning in self._config_copy_warnings(keys):
            self.collector.warn(warning)

    def _config_copy_warnings(self, keys: list[str]) -> list[Failure]:
        if not keys:
            return []
        own = str(self.store.cache_dir).lstrip("/") + "/config.json"  # this cache directory's copy first
        keys.sort(key=lambda k: k != own)
        more = f" (and {len(keys) - 1} more config.json objects)" if len(keys) > 1 else ""
        message = (
            f"bucket {LEGACY_CACHE_BUCKET} still holds the old script's copy of config.json with the AWS keys, "
            f"s3://{LEGACY_CACHE_BUCKET}/{keys[0]}{more}: rotate those keys and delete that object "
            "(async-backup never deletes it)"
        )
        return [Failure(FailureKind.SECRETS_EXPOSED, "cache", f"s3://{LEGACY_CACHE_BUCKET}", message)]
