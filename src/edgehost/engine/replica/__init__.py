"""The replica root as a flat key space: one interface, a directory and an S3 (R2) implementation.

Everything that lists or reads the bucket goes through a `ReplicaStore`; restores themselves are
done by the litestream binary. `ReplicaStore(url, ...)` returns the implementation the URL's scheme
names (`FileStore` for file://, `S3Store` for s3://), so callers never branch on the scheme.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import urlparse

from edgehost.errors import BadInput, EdgehostError, ExitStatus
from edgehost.engine.layout import GLOBAL, is_slug
from edgehost.settings import Settings


# S3 and R2 answer a failed If-Match / If-None-Match with 412 PreconditionFailed, or with 409
# ConditionalRequestConflict when another conditional write to the key is in flight; an If-Match on a
# key that is gone is a 404 NoSuchKey. All three mean "someone else changed it first".
_CONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


class ConditionalWritesUnsupported(EdgehostError):
    """The endpoint does not do conditional writes, so no lease can be taken safely on it."""

    status = ExitStatus.ENVIRONMENT


class PreconditionFailed(EdgehostError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""

    status = ExitStatus.ENVIRONMENT


@dataclass(frozen=True)
class ReplicaObject:
    key: str  # relative to the replica root, '/'-separated
    size: int
    modified: datetime
    etag: str = ""  # S3: the listing's ETag (an MD5 of the content for a single-part upload)


_CLIENTS: dict[tuple[str, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(endpoint: str, region: str, environ: dict[str, str] | None = None):
    """A boto3 S3 client configured the way R2 needs: path style, region `auto`, checksums only when required.

    One client per endpoint, region and credentials for the life of the process (boto3 clients are
    thread-safe): building one costs ~0.1 CPU-s, and a follower lists the bucket every second.
    """
    env = os.environ if environ is None else environ
    key_id = env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("LITESTREAM_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise BadInput("S3/R2 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the env file or environment")
    key = (endpoint, region, key_id, secret, env.get("AWS_SESSION_TOKEN") or "")
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = _new_s3_client(endpoint, region, key_id, secret, key[4])
        return client


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            return parsed
    except (TypeError, ValueError):
        pass
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)  # an HTTP date (Last-Modified) or an epoch number


def _new_s3_client(endpoint: str, region: str, key_id: str, secret: str, token: str):
    import boto3
    import botocore.session
    from botocore.config import Config

    config = Config(
        region_name=region or "auto",
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,  # the restore engine GETs on 16 threads
        connect_timeout=5,
        read_timeout=30,
    )
    core = botocore.session.get_session()
    # A listing page is 1,000 keys, each with a LastModified that botocore parses with dateutil by
    # default: that was most of a mirror round's CPU. S3's timestamps are ISO 8601; others fall back.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    aws_session_token=token or None, botocore_session=core)
    return session.client("s3", endpoint_url=endpoint or None, config=config)


class ReplicaStore:
    """The replica root (file:// or s3://) as a flat key space; constructing one picks the implementation."""

    scheme = ""

    def __new__(cls, url: str, endpoint: str = "", region: str = "", environ: dict[str, str] | None = None):
        if cls is ReplicaStore:
            scheme = urlparse(url).scheme
            if scheme == "file":
                from edgehost.engine.replica.file import FileStore as cls  # noqa: N813
            elif scheme == "s3":
                from edgehost.engine.replica.s3 import S3Store as cls  # noqa: N813
            else:
                raise BadInput(f"replica URL {url}: unsupported scheme")
        return super().__new__(cls)

    def __init__(self, url: str, endpoint: str = "", region: str = "", environ: dict[str, str] | None = None):
        self.url = url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> "ReplicaStore":
        return cls(url or settings.replica_url, settings.s3_endpoint, settings.s3_region, dict(settings.environ))

    def list_dirs(self, rel: str = "") -> list[str]:
        """Names one level below `rel` (S3 common prefixes or directories)."""
        raise NotImplementedError

    def walk(self, rel: str = "") -> Iterator[ReplicaObject]:
        """Every object under `rel`, recursively."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def get(self, rel: str) -> bytes:
        """One object's bytes; raises bucket.ObjectGone when it is not there (any more)."""
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        raise NotImplementedError

    def head(self, rel: str) -> dict[str, str]:
        """One object's metadata (S3 user metadata; {} for a file), without reading it."""
        raise NotImplementedError

    # Conditional writes: the primitives behind the writer lease. On S3 the server decides; on a file
    # replica an flock on a sibling lock file makes read-compare-write atomic between processes.

    def get_versioned(self, rel: str) -> tuple[bytes, str, float | None] | None:
        """(data, etag, age in seconds) of one object, or None when it does not exist.

        The age comes from one clock: the server's (its `Date` minus the object's LastModified) for
        S3, this machine's for a file replica; None when the server sends no Date.
        """
        raise NotImplementedError

    def put_if_absent(self, rel: str, data: bytes) -> str:
        """Create `rel` only if no object is there (If-None-Match: *); its new etag. Raises PreconditionFailed."""
        raise NotImplementedError

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str:
        """Replace `rel` only if it is still the version `etag` names (If-Match); its new etag. Raises PreconditionFailed."""
        raise NotImplementedError

    def head_date(self) -> datetime | None:
        """The server's clock (HTTP Date of a bucket request), for skew checks; None for file replicas."""
        return None

    def reachable(self) -> None:
        """Raise EnvironmentProblem unless the replica root can be listed."""
        raise NotImplementedError


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replica_keys(settings: Settings, tenants_root: str, global_url: str) -> list[str]:
    """Every database the replica holds, found by listing it: GLOBAL first (when there), then tenant slugs."""
    store = ReplicaStore.from_settings(settings, tenants_root)
    names = store.list_dirs()
    keys = [n for n in names if is_slug(n) and n != settings.global_db_name]
    parent, _, leaf = global_url.rstrip("/").rpartition("/")
    holder = names if parent == store.url else ReplicaStore.from_settings(settings, parent).list_dirs()
    return ([GLOBAL] if leaf in holder else []) + keys


def __getattr__(name: str):
    # The implementations import this module; hand them out lazily to avoid an import cycle.
    if name == "FileStore":
        from edgehost.engine.replica.file import FileStore
        return FileStore
    if name == "S3Store":
        from edgehost.engine.replica.s3 import S3Store
        return S3Store
    raise AttributeError(name)
