"""Read and validate config.json into frozen dataclasses.

Owns the file format (the existing script's keys, read unchanged, plus documented optional ones)
and every check that can be made without touching S3 or walking a folder. Every problem is a
`ConfigError` whose one-line text names the key and the fix. Imports nothing of S3 or the network.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .bandwidth import Timetable, parse_bandwidth
from .naming import AccountNames, check_bucket_prefix
from .window import Window, window_from_config

MiB = 1024 * 1024
CONFIG_NAME = "config.json"
DEFAULT_REGION = "eu-central-1"
DEFAULT_STORAGE_CLASS = "DEEP_ARCHIVE"
DEFAULT_NONCURRENT_DAYS = 180  # DEEP_ARCHIVE bills at least 180 days anyway [S3 pricing]
DEFAULT_BUCKET_PREFIX = "backup-"
# Every file is re-read (and every object HEADed) once in this many runs: APTrust's 90 days.
DEFAULT_FIXITY_DAYS = 90

# S3's upload limits [S3 user guide, "Multipart upload limits"]: the tuning is validated against
# them here, and the planner sizes parts within them.
MIN_PART_BYTES = 5 * MiB  # every part but the last
MAX_PART_BYTES = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_SINGLE_PUT_BYTES = 5 * 1000 * 1000 * 1000  # one PutObject: 5 GB, not GiB

STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
ChecksumCalculation = Literal["when_supported", "when_required"]
Naming = Literal["stable", "legacy"]
LockMode = Literal["GOVERNANCE", "COMPLIANCE"]
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
# S3's limit on a default retention: 100 years [S3 API reference, DefaultRetention].
MAX_LOCK_DAYS = 36_500


# A folder's or root's share of the upload workers when several targets have files waiting: a
# target of priority 3 gets three times the bytes per turn of one of priority 1 (backup/lanes.py).
DEFAULT_PRIORITY = 1
MAX_PRIORITY = 100


@dataclass(frozen=True, slots=True)
class FolderSpec:
    """One configured folder (or root); `bucket` pins its bucket name when given (folders only)."""

    path: str
    bucket: str | None = None
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """backup.object_lock: every new version in a target's bucket is kept `days` days at least
    (S3's default retention in `mode`); the cache bucket is never locked."""

    mode: LockMode
    days: int


@dataclass(frozen=True, slots=True)
class AwsSettings:
    access_key: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    # "when_supported": botocore's default since 1.36, we send CRC32 checksums.
    # "when_required": for S3-compatible servers that reject those: the fast path signs each body's
    # SHA-256 as its payload hash instead (Content-MD5 through botocore).
    checksum_calculation: ChecksumCalculation = "when_supported"
    verify_tls: bool = True
    # PEM file of the CAs to trust for the endpoint's certificate; else AWS_CA_BUNDLE or the profile's.
    ca_bundle: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # PutObject and UploadPart signed and sent without botocore's per-request machinery.
    direct_put: bool = True


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs for throughput and memory.

    File contents in memory never exceed memory_budget_bytes (16 MiB by default), whatever the
    number of workers and the file sizes: a file of at most 256 KiB holds its size from the read
    until S3 confirmed it; any larger body (a file, or one part) is streamed from the file through
    two 256 KiB buffers, which stay charged while idle in the pool; uploads wait for budget, first
    come first served. Through botocore (buckets the fast path cannot sign) a body is held whole,
    and a part larger than the budget takes the whole budget alone.

    Parts are 64 MiB, and files below 64 MiB are one PutObject: with bodies streamed, the part size
    costs no memory, and on DEEP_ARCHIVE every request is billed (README, "What a run costs").
    Files over 625 GiB raise the part size (10,000 parts at most).
    """

    workers: int = 128  # uploads in flight: S3 latency, not CPU, is what many workers hide
    multipart_threshold_bytes: int = 64 * MiB
    part_size_bytes: int = 64 * MiB
    parts_in_flight: int = 8
    memory_budget_bytes: int = 16 * MiB
    max_delete_percent: float = 50.0
    # The change guard (backup/changeguard.py): a share of a target's cached files overwritten in
    # one run, and images of one target whose new bytes begin like no known kind, that hold back
    # the target's updates.
    max_change_percent: float = 20.0
    unrecognised_images_alarm: int = 2
    max_attempts: int = 5  # total attempts per request, the first included
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    walk_threads: int = 4
    # Threads that read and checksum files and write the cache (anyio's default is 40): on two
    # cores a few keep the CPUs busy, and each idle one keeps its stack and malloc arena.
    file_threads: int = 16
    queue_size: int = 256
    # Request bodies' bytes per second, by time of day (settings/bandwidth.py); None: no limit.
    bandwidth: Timetable | None = None


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    folders: tuple[FolderSpec, ...]
    roots: tuple[str, ...]
    # Priorities of roots other than the default, by root path: each subfolder target has its root's.
    root_priorities: dict[str, int] = field(default_factory=dict)
    webhook: str | None = field(default=None, repr=False)
    notify_on_success: bool = False
    aws: AwsSettings = field(default_factory=AwsSettings)
    bucket_prefix: str = DEFAULT_BUCKET_PREFIX
    # Whether config.json names a prefix: the operator's own choice, used as it is. Without one, on
    # AWS, new default names carry the account's tag (see `account_scoped`).
    bucket_prefix_set: bool = False
    naming: Naming = "stable"
    # Whether config.json names it: only a written-out "stable" may start new buckets beside an
    # old script's installation (the old script's config.json has no such key).
    naming_set: bool = False
    exclude: tuple[str, ...] = ()
    storage_class: str = DEFAULT_STORAGE_CLASS
    noncurrent_days: int = DEFAULT_NONCURRENT_DAYS
    object_lock: ObjectLock | None = None
    cache_bucket: str | None = None
    keep_reports: int = 30
    window: Window = field(default_factory=Window)  # backup.window, or --stop-at / --max-duration
    # Each run re-reads about 1/fixity_days of every target's bytes and HEADs as many of its objects
    # (fixity/); 0 turns the nightly slice off (the `fixity` command still runs a whole pass).
    fixity_days: int = DEFAULT_FIXITY_DAYS
    tuning: Tuning = field(default_factory=Tuning)
    warnings: tuple[str, ...] = ()
    # Overrides of pricing.py's table, validated: {"write_per_1000": {"DEEP_ARCHIVE": 0.06}, ...}
    pricing: dict[str, Any] = field(default_factory=dict)
    # Learnt from AWS by the run before naming (never from config.json); None until then.
    account_names: AccountNames | None = None

    @property
    def account_scoped(self) -> bool:
        """Default names that must be unique to the AWS account: on AWS, where bucket names are
        global, with the default prefix. Another endpoint's names are not shared with strangers,
        and a prefix in config.json is the operator's own (the README asks for a unique one)."""
        return self.aws.endpoint_url is None and not self.bucket_prefix_set


_KNOWN_KEYS: dict[str, set[str]] = {
    "": {"backup", "notification", "aws", "tuning", "pricing"},
    "backup": {
        "folders",
        "roots",
        "bucket_prefix",
        "naming",
        "exclude",
        "storage_class",
        "noncurrent_days",
        "object_lock",
        "cache_bucket",
        "keep_reports",
        "window",
        "fixity_days",
    },
    "notification": {"webhook", "on_success"},
    "aws": {
        "access_key",
        "secret_access_key",
        "region",
        "endpoint_url",
        "checksum_calculation",
        "verify_tls",
        "ca_bundle",
        "addressing_style",
        "direct_put",
    },
    "tuning": {
        "workers",
        "multipart_threshold_mib",
        "part_size_mib",
        "parts_in_flight",
        "memory_budget_mib",
        "max_delete_percent",
        "max_change_percent",
        "unrecognised_images_alarm",
        "max_attempts",
        "connect_timeout_s",
        "read_timeout_s",
        "walk_threads",
        "file_threads",
        "queue_size",
        "bandwidth",
    },
}


def load_config(cache_dir: Path) -> Config:
    """Read `cache_dir/config.json`; raise ConfigError with one line naming the problem and the fix."""
    path = cache_dir / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: create it (see the README's configuration reference) "
            "or point --cache at the directory that holds it"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({_os_reason(exc)}): fix its permissions or encoding") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); fix the syntax there"
        ) from None
    warnings = list(_permission_warnings(path))
    return parse_config(raw, path, warnings)


def parse_config(raw: Any, source: Path, warnings: list[str] | None = None) -> Config:
    """Validate an already decoded config document."""
    warnings = list(warnings or [])
    where = str(source)
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: the top level must be a JSON object with a "backup" section')
    warnings.extend(_unknown_keys(raw))

    backup = _section(raw, "backup", where, required=True)
    folders = _folders(backup.get("folders", []), where)
    root_specs = [_root(r, f"backup.roots[{i}]", where) for i, r in enumerate(_list(backup, "roots", where))]
    roots = tuple(r.path for r in root_specs)
    if not folders and not roots:
        raise ConfigError(f"{where}: backup.folders and backup.roots are both empty; name at least one folder")

    notification = _section(raw, "notification", where, required=False)
    webhook = _opt_str(notification, "webhook", "notification", where)
    if webhook is not None and not webhook.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: notification.webhook must be an http(s) URL (the Teams Workflows URL)")
    on_success = _opt_bool(notification, "on_success", "notification", where, default=False)

    aws_raw = _section(raw, "aws", where, required=False)
    access_key = _opt_str(aws_raw, "access_key", "aws", where)
    secret = _opt_str(aws_raw, "secret_access_key", "aws", where)
    if (access_key is None) != (secret is None):
        raise ConfigError(
            f"{where}: aws.access_key and aws.secret_access_key go together; set both, "
            "or neither to use the standard AWS credential chain"
        )
    checksum = _opt_str(aws_raw, "checksum_calculation", "aws", where) or "when_supported"
    if checksum not in ("when_supported", "when_required"):
        raise ConfigError(
            f'{where}: aws.checksum_calculation must be "when_supported" or "when_required" (got {checksum!r})'
        )
    addressing = _opt_str(aws_raw, "addressing_style", "aws", where) or "auto"
    if addressing not in ("auto", "path", "virtual"):
        raise ConfigError(f'{where}: aws.addressing_style must be "auto", "path" or "virtual"')
    verify_tls = _opt_bool(aws_raw, "verify_tls", "aws", where, default=True)
    if not verify_tls:
        warnings.append("aws.verify_tls is false: TLS certificates of the S3 endpoint are not checked")
    ca_bundle = _opt_str(aws_raw, "ca_bundle", "aws", where)
    if ca_bundle is not None:
        ca_bundle = os.path.expanduser(ca_bundle)
        if not os.path.isfile(ca_bundle):
            raise ConfigError(
                f"{where}: aws.ca_bundle is {ca_bundle!r}, which is not a file; give the path of the PEM file "
                "holding the CA certificate(s) that issued the endpoint's certificate"
            )
    aws = AwsSettings(
        access_key=access_key,
        secret_access_key=secret,
        region=_opt_str(aws_raw, "region", "aws", where) or DEFAULT_REGION,
        endpoint_url=_opt_str(aws_raw, "endpoint_url", "aws", where),
        checksum_calculation=checksum,  # type: ignore[arg-type]
        verify_tls=verify_tls,
        ca_bundle=ca_bundle,
        addressing_style=addressing,  # type: ignore[arg-type]
        direct_put=_opt_bool(aws_raw, "direct_put", "aws", where, default=True),
    )

    storage_class = _opt_str(backup, "storage_class", "backup", where) or DEFAULT_STORAGE_CLASS
    if storage_class not in STORAGE_CLASSES:
        raise ConfigError(f"{where}: backup.storage_class must be one of {', '.join(STORAGE_CLASSES)}")
    naming = _opt_str(backup, "naming", "backup", where) or "stable"
    if naming not in ("stable", "legacy"):
        raise ConfigError(
            f'{where}: backup.naming must be "stable" or "legacy" (legacy adopts the old script\'s buckets)'
        )
    exclude = tuple(_str_item(x, f"backup.exclude[{i}]", where) for i, x in enumerate(_list(backup, "exclude", where)))
    noncurrent_days = _opt_int(backup, "noncurrent_days", "backup", where, DEFAULT_NONCURRENT_DAYS, minimum=1)
    prefix = _opt_str(backup, "bucket_prefix", "backup", where)
    if prefix is None:
        prefix = DEFAULT_BUCKET_PREFIX
    check_bucket_prefix(prefix, where)

    return Config(
        source=source,
        folders=folders,
        roots=roots,
        root_priorities={r.path: r.priority for r in root_specs if r.priority != DEFAULT_PRIORITY},
        webhook=webhook,
        notify_on_success=on_success,
        aws=aws,
        bucket_prefix=prefix,
        bucket_prefix_set=_opt_str(backup, "bucket_prefix", "backup", where) is not None,
        naming=naming,  # type: ignore[arg-type]
        naming_set=backup.get("naming") is not None,
        exclude=exclude,
        storage_class=storage_class,
        noncurrent_days=noncurrent_days,
        object_lock=_object_lock(backup.get("object_lock"), where),
        cache_bucket=_opt_str(backup, "cache_bucket", "backup", where),
        keep_reports=_opt_int(backup, "keep_reports", "backup", where, 30, minimum=1),
        window=window_from_config(backup.get("window"), where),
        fixity_days=_opt_int(backup, "fixity_days", "backup", where, DEFAULT_FIXITY_DAYS, minimum=0),
        tuning=_tuning(_section(raw, "tuning", where, required=False), where),
        warnings=tuple(warnings),
        pricing=_pricing(_section(raw, "pricing", where, required=False), where),
    )


def _object_lock(value: Any, where: str) -> ObjectLock | None:
    """backup.object_lock: {"mode": "GOVERNANCE" | "COMPLIANCE", "days": N}, or absent (off)."""
    if value is None:
        return None
    example = '{"mode": "GOVERNANCE", "days": 30}'
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: backup.object_lock must be an object like {example}")
    unknown = sorted(set(value) - {"mode", "days"})
    if unknown:
        raise ConfigError(f'{where}: backup.object_lock has unknown keys {unknown}; use "mode" and "days"')
    mode = value.get("mode")
    if mode not in LOCK_MODES:
        raise ConfigError(
            f'{where}: backup.object_lock.mode is {mode!r}; use "GOVERNANCE" or "COMPLIANCE" '
            "(see the README's Object Lock)"
        )
    days = value.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_LOCK_DAYS:
        raise ConfigError(
            f"{where}: backup.object_lock.days is {days!r}; give a whole number of days from 1 to {MAX_LOCK_DAYS}"
        )
    return ObjectLock(mode, days)


_PRICE_KEYS = {
    "write_per_1000": STORAGE_CLASSES,
    "read_per_1000": STORAGE_CLASSES,
    "storage_per_gb_month": STORAGE_CLASSES,
    "retrieval_per_1000": ("Bulk", "Standard"),
    "retrieval_per_gb": ("Bulk", "Standard"),
}


def _pricing(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The "pricing" section: dollar figures that replace entries of pricing.py's table."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "transfer_out_per_gb":
            out[key] = _price(value, f"pricing.{key}", where)
            continue
        if key not in _PRICE_KEYS:
            known = ", ".join([*_PRICE_KEYS, "transfer_out_per_gb"])
            raise ConfigError(f"{where}: pricing.{key} is not a known price; use one of {known}")
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: pricing.{key} must be an object like {{"{_PRICE_KEYS[key][-1]}": 0.05}}')
        for name, price in value.items():
            if name not in _PRICE_KEYS[key]:
                raise ConfigError(f"{where}: pricing.{key}.{name} is unknown; use one of {', '.join(_PRICE_KEYS[key])}")
            _price(price, f"pricing.{key}.{name}", where)
        out[key] = {name: float(price) for name, price in value.items()}
    return out


def _price(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1_000_000:
        raise ConfigError(f"{where}: {key} must be a price in US dollars, a number of 0 or more (got {value!r})")
    return float(value)


def _tuning(raw: dict[str, Any], where: str) -> Tuning:
    d = Tuning()
    part = _opt_int(
        raw,
        "part_size_mib",
        "tuning",
        where,
        d.part_size_bytes // MiB,
        minimum=MIN_PART_BYTES // MiB,
        maximum=MAX_PART_BYTES // MiB,
    )
    # Files below the threshold are one PutObject, so it is at most S3's largest PutObject (4768 MiB);
    # at or above it they go in parts of at least MIN_PART_BYTES.
    threshold = _opt_int(
        raw,
        "multipart_threshold_mib",
        "tuning",
        where,
        d.multipart_threshold_bytes // MiB,
        minimum=MIN_PART_BYTES // MiB,
        maximum=MAX_SINGLE_PUT_BYTES // MiB,
    )
    return Tuning(
        workers=_opt_int(raw, "workers", "tuning", where, d.workers, minimum=1, maximum=1024),
        multipart_threshold_bytes=threshold * MiB,
        part_size_bytes=part * MiB,
        parts_in_flight=_opt_int(raw, "parts_in_flight", "tuning", where, d.parts_in_flight, minimum=1, maximum=256),
        memory_budget_bytes=_opt_int(
            raw, "memory_budget_mib", "tuning", where, d.memory_budget_bytes // MiB, minimum=16, maximum=1024 * 1024
        )
        * MiB,
        max_delete_percent=_opt_float(raw, "max_delete_percent", where, d.max_delete_percent, 0.0, 100.0),
        max_change_percent=_opt_float(raw, "max_change_percent", where, d.max_change_percent, 0.0, 100.0),
        unrecognised_images_alarm=_opt_int(
            raw, "unrecognised_images_alarm", "tuning", where, d.unrecognised_images_alarm, minimum=1, maximum=1_000_000
        ),
        max_attempts=_opt_int(raw, "max_attempts", "tuning", where, d.max_attempts, minimum=1, maximum=20),
        connect_timeout_s=_opt_float(raw, "connect_timeout_s", where, d.connect_timeout_s, 0.1, 600.0),
        read_timeout_s=_opt_float(raw, "read_timeout_s", where, d.read_timeout_s, 0.1, 3600.0),
        walk_threads=_opt_int(raw, "walk_threads", "tuning", where, d.walk_threads, minimum=1, maximum=64),
        file_threads=_opt_int(raw, "file_threads", "tuning", where, d.file_threads, minimum=1, maximum=256),
        queue_size=_opt_int(raw, "queue_size", "tuning", where, d.queue_size, minimum=1, maximum=100_000),
        bandwidth=parse_bandwidth(raw.get("bandwidth"), where),
    )


def _folders(value: Any, where: str) -> tuple[FolderSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: backup.folders must be a list of folder paths")
    specs = []
    for i, item in enumerate(value):
        key = f"backup.folders[{i}]"
        if isinstance(item, str):
            specs.append(FolderSpec(_abs_path(item, key, where)))
        elif isinstance(item, dict):
            unknown = set(item) - {"path", "bucket", "priority"}
            if unknown:
                raise ConfigError(
                    f'{where}: {key} has unknown keys {sorted(unknown)}; use "path", "bucket" and "priority"'
                )
            if "path" not in item:
                raise ConfigError(f'{where}: {key} needs a "path"')
            bucket = item.get("bucket")
            if bucket is not None and not isinstance(bucket, str):
                raise ConfigError(f"{where}: {key}.bucket must be a string")
            path = _abs_path(item["path"], f"{key}.path", where)
            specs.append(FolderSpec(path, bucket, _priority(item, key, where)))
        else:
            raise ConfigError(
                f'{where}: {key} must be a path string or {{"path": ..., "bucket": ..., "priority": ...}}'
            )
    return tuple(specs)


def _root(item: Any, key: str, where: str) -> FolderSpec:
    """A root: a path string, or {"path": ..., "priority": ...} (its subfolders' names are generated)."""
    if not isinstance(item, dict):
        return FolderSpec(_abs_path(item, key, where))
    unknown = set(item) - {"path", "priority"}
    if unknown:
        raise ConfigError(f'{where}: {key} has unknown keys {sorted(unknown)}; use "path" and "priority"')
    if "path" not in item:
        raise ConfigError(f'{where}: {key} needs a "path"')
    return FolderSpec(_abs_path(item["path"], f"{key}.path", where), priority=_priority(item, key, where))


def _priority(item: dict[str, Any], key: str, where: str) -> int:
    value = item.get("priority", DEFAULT_PRIORITY)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PRIORITY:
        raise ConfigError(
            f"{where}: {key}.priority is {value!r}; give a whole number from 1 (the default) to {MAX_PRIORITY}"
        )
    return value


def _abs_path(value: Any, key: str, where: str) -> str:
    text = os.path.expanduser(_str_item(value, key, where))  # as the old script did for folders
    if not os.path.isabs(text):
        raise ConfigError(f"{where}: {key} is {text!r}; give an absolute path (starting with /)")
    return os.path.normpath(text)


def _section(raw: dict[str, Any], name: str, where: str, *, required: bool) -> dict[str, Any]:
    if name not in raw or raw[name] is None:
        if required:
            raise ConfigError(f'{where}: the "{name}" section is missing; add it (see the README)')
        return {}
    value = raw[name]
    if not isinstance(value, dict):
        raise ConfigError(f'{where}: "{name}" must be a JSON object')
    return value


def _list(section: dict[str, Any], key: str, where: str) -> list[Any]:
    value = section.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: backup.{key} must be a list")
    return value


def _str_item(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _opt_str(section: dict[str, Any], key: str, name: str, where: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name}.{key} must be a string")
    return value


def _opt_bool(section: dict[str, Any], key: str, name: str, where: str, *, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {name}.{key} must be true or false")
    return value


def _opt_int(
    section: dict[str, Any],
    key: str,
    name: str,
    where: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {name}.{key} must be a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{where}: {name}.{key} is {value}; it must be at least {minimum}{upper}")
    return value


def _opt_float(section: dict[str, Any], key: str, where: str, default: float, lo: float, hi: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: tuning.{key} must be a number")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: tuning.{key} is {value}; it must be between {lo:g} and {hi:g}")
    return float(value)


def _unknown_keys(raw: dict[str, Any]) -> list[str]:
    found = [f'unknown key "{k}" in config.json is ignored (a typo?)' for k in raw if k not in _KNOWN_KEYS[""]]
    for section, known in _KNOWN_KEYS.items():
        value = raw.get(section) if section else None
        if isinstance(value, dict):
            found.extend(
                f'unknown key "{section}.{k}" in config.json is ignored (a typo?)' for k in value if k not in known
            )
    return found


def _permission_warnings(path: Path) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return [f"{path} is readable by other users and holds secrets: run chmod 600 {path}"]
    return []


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
