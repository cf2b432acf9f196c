"""Set-up before and during a run: the first request that proves the endpoint, and each target's
bucket created and configured on first need.

Owns what turns a missing or unreachable S3 into one clear error: a fatal one for the endpoint,
one bucket failure per target otherwise. Talks to S3 through `s3.S3` and `s3.buckets` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import Failure, FailureCollector, FailureKind, FatalError, S3Error
from ..s3.buckets import DENIED_CODES, ObjectLockRefused, ensure_bucket, owned_elsewhere
from ..s3.client import S3, endpoint_name
from ..settings.config import Config
from .runs import TargetRun

# The first request of a run must be answered this long after its connection was made
# (tuning.connect_timeout_s is added for making it): S3, Ceph and MinIO answer GetBucketVersioning
# in milliseconds, and a silent server must stop the run in seconds, not after every attempt's
# read timeout (5 x 60 s). Only this request has it; the others keep tuning.read_timeout_s.
PROBE_ANSWER_S = 5.0


class BucketSetup:
    def __init__(self, s3: S3, config: Config, collector: FailureCollector) -> None:
        self.s3 = s3
        self.config = config
        self.collector = collector

    async def check_endpoint(self, runs: Sequence[TargetRun]) -> None:
        """One cheap request before any work: bad credentials or an unreachable endpoint stop the
        run here, with one clear error, instead of as thousands of per-file failures."""
        named = [r.target.bucket for r in runs if r.target.bucket and not r.target.problem]
        probe = named[0] if named else "async-backup-probe"
        answer_within_s = self.config.tuning.connect_timeout_s + PROBE_ANSWER_S
        try:
            await self.s3.probe_versioning(probe, answer_within_s)
        except S3Error as exc:
            where = endpoint_name(self.config.aws)
            if exc.code in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
                raise FatalError(f"cannot reach S3 at {where}: check aws.endpoint_url and the network") from None
            if exc.code in ("NoAnswer", "ReadTimeoutError"):
                raise FatalError(
                    f"S3 at {where} took the connection but sent no answer within {answer_within_s:g} s; "
                    "check aws.endpoint_url (an S3 server, its port, http or https) and any proxy or firewall between"
                ) from None
            if exc.code in DENIED_CODES:
                if named and await owned_elsewhere(self.s3, probe, exc):
                    return  # the credentials work; that target fails alone at its bucket setup
                raise FatalError(
                    f"S3 at {where} denied access to bucket {probe} ({exc.code}); check the credentials' "
                    "permissions (see the README's IAM policy)"
                ) from None
            raise FatalError(f"S3 at {where} failed the first request ({exc}); check the endpoint") from None

    async def ready(self, run: TargetRun) -> bool:
        """Create and configure the target's bucket on first need, once per run."""
        if run.bucket_ready:
            return True
        async with run.bucket_lock:
            if run.bucket_ready or run.bucket_failed:
                return run.bucket_ready
            try:
                # Multipart uploads left in it by others (another installation) are the lifecycle
                # rule's to abort, never ours: see cleanup.
                pinned = any(f.bucket == run.target.bucket for f in self.config.folders)
                await ensure_bucket(
                    self.s3,
                    run.target.bucket,
                    self.config.noncurrent_days,
                    chosen=pinned,
                    object_lock=self.config.object_lock,
                )
            except ObjectLockRefused as exc:
                # Backed up all the same: an unlocked copy beats none; the failure says what to do.
                self.collector.add(
                    Failure(FailureKind.BUCKET, run.target.path, f"s3://{run.target.bucket}", exc.message, exc.code)
                )
            except S3Error as exc:
                run.bucket_failed = True
                self.collector.add(
                    Failure(
                        FailureKind.BUCKET,
                        run.target.path,
                        f"s3://{run.target.bucket}",
                        f"{exc.message}; nothing of this target was backed up",
                        exc.code,
                    )
                )
                return False
            run.bucket_ready = True
            return True
