"""The object store behind the replicas, through boto3 with R2-safe settings (or a local directory).

Everything that lists or reads the bucket goes through `ReplicaStore`; restores themselves are done
by the litestream binary.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem, ExitStatus
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


def s3_client(endpoint: str, region: str, environ: dict[str, str] | None = None):
    """A boto3 S3 client configured the way R2 needs: path style, region `auto`, checksums only when required."""
    import boto3
    from botocore.config import Config

    env = os.environ if environ is None else environ
    key_id = env.get("AWS_ACCESS_KEY_ID") or env.get("LITESTREAM_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("LITESTREAM_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise BadInput("S3/R2 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the env file or environment")
    config = Config(
        region_name=region or "auto",
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    aws_session_token=env.get("AWS_SESSION_TOKEN"))
    return session.client("s3", endpoint_url=endpoint or None, config=config)


class ReplicaStore:
    """The replica root (file:// or s3://) as a flat key space."""

    def __init__(self, url: str, endpoint: str = "", region: str = "", environ: dict[str, str] | None = None):
        self.url = url.rstrip("/")
        parsed = urlparse(self.url)
        self.scheme = parsed.scheme
        if self.scheme == "file":
            self.root = Path(unquote(parsed.path))
            self._client = None
        elif self.scheme == "s3":
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self._client = s3_client(endpoint, region, environ)
        else:
            raise BadInput(f"replica URL {url}: unsupported scheme")

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> "ReplicaStore":
        return cls(url or settings.replica_url, settings.s3_endpoint, settings.s3_region, dict(settings.environ))

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    def _s3(self, what: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise self._s3_problem(what, exc) from None

    def _s3_problem(self, what: str, exc: Exception) -> EnvironmentProblem:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            return EnvironmentProblem(f"replica {self.url}: {what} failed: {err.get('Code')} {err.get('Message', '')}".strip())
        return EnvironmentProblem(f"replica {self.url}: {what} failed: {exc}")

    def list_dirs(self, rel: str = "") -> list[str]:
        """Names one level below `rel` (S3 common prefixes or directories)."""
        if self.scheme == "file":
            base = self.root / rel
            return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        names: list[str] = []
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kw["ContinuationToken"] = token
            page = self._s3("list", self._client.list_objects_v2, **kw)
            names += [cp["Prefix"][len(prefix):].rstrip("/") for cp in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(names)

    def walk(self, rel: str = "") -> Iterator[ReplicaObject]:
        """Every object under `rel`, recursively."""
        if self.scheme == "file":
            base = self.root / rel
            if not base.is_dir():
                return
            for dirpath, _, files in os.walk(base):
                for f in files:
                    p = Path(dirpath) / f
                    st = p.stat()
                    yield ReplicaObject(str(p.relative_to(self.root)), st.st_size,
                                        datetime.fromtimestamp(st.st_mtime, timezone.utc))
            return
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        strip = f"{self.prefix}/" if self.prefix else ""
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._s3("list", self._client.list_objects_v2, **kw)
            for obj in page.get("Contents", []):
                yield ReplicaObject(obj["Key"][len(strip):], obj["Size"], obj["LastModified"])
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")

    def read(self, rel: str) -> bytes:
        if self.scheme == "file":
            return (self.root / rel).read_bytes()
        return self._s3("get", self._client.get_object, Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def write(self, rel: str, data: bytes) -> None:
        if self.scheme == "file":
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        self._s3("put", self._client.put_object, Bucket=self.bucket, Key=self._key(rel), Body=data)

    def delete(self, rel: str) -> None:
        if self.scheme == "file":
            path = self.root / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return
        self._s3("delete", self._client.delete_object, Bucket=self.bucket, Key=self._key(rel))

    # Conditional writes: the primitives behind the writer lease. On S3 the server decides; on a file
    # replica an flock on a sibling lock file makes read-compare-write atomic between processes.

    def get_versioned(self, rel: str) -> tuple[bytes, str, float | None] | None:
        """(data, etag, age in seconds) of one object, or None when it does not exist.

        The age comes from one clock: the server's (its `Date` minus the object's LastModified) for
        S3, this machine's for a file replica; None when the server sends no Date.
        """
        if self.scheme == "file":
            try:
                with open(self.root / rel, "rb") as f:
                    # fstat and read the same open file: a concurrent os.replace cannot mix versions.
                    st = os.fstat(f.fileno())
                    data = f.read()
            except FileNotFoundError:
                return None
            return data, _sha256(data), max(0.0, time.time() - st.st_mtime)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
            data = resp["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._s3_problem("get", exc) from None
        except BotoCoreError as exc:
            raise self._s3_problem("get", exc) from None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        age = None
        if date and resp.get("LastModified"):
            from email.utils import parsedate_to_datetime

            age = max(0.0, (parsedate_to_datetime(date) - resp["LastModified"]).total_seconds())
        return data, resp["ETag"], age

    def put_if_absent(self, rel: str, data: bytes) -> str:
        """Create `rel` only if no object is there (If-None-Match: *); its new etag. Raises PreconditionFailed."""
        if self.scheme == "file":
            with self._file_lock(rel):
                if (self.root / rel).exists():
                    raise PreconditionFailed(f"replica {self.url}: {rel} already exists")
                return self._file_replace(rel, data)
        return self._s3_conditional("conditional put", Key=self._key(rel), Body=data, IfNoneMatch="*")

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str:
        """Replace `rel` only if it is still the version `etag` names (If-Match); its new etag. Raises PreconditionFailed."""
        if self.scheme == "file":
            with self._file_lock(rel):
                try:
                    current = (self.root / rel).read_bytes()
                except FileNotFoundError:
                    raise PreconditionFailed(f"replica {self.url}: {rel} is gone") from None
                if _sha256(current) != etag:
                    raise PreconditionFailed(f"replica {self.url}: {rel} changed")
                return self._file_replace(rel, data)
        return self._s3_conditional("conditional put", Key=self._key(rel), Body=data, IfMatch=etag)

    def _s3_conditional(self, what: str, **kw) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.put_object(Bucket=self.bucket, **kw)["ETag"]
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if err.get("Code") in _CONDITION_CODES or status in (409, 412):
                raise PreconditionFailed(f"replica {self.url}: {what} of {kw['Key']} lost: {err.get('Code')}") from None
            if err.get("Code") == "NotImplemented" or status == 501:
                raise ConditionalWritesUnsupported(
                    f"replica {self.url}: the endpoint refused a conditional write ({err.get('Code')} {status}); "
                    f"the writer lease needs If-None-Match/If-Match, which S3, R2 and MinIO support") from None
            raise self._s3_problem(what, exc) from None
        except BotoCoreError as exc:
            raise self._s3_problem(what, exc) from None

    def _file_lock(self, rel: str):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return _Flock(path.with_name(path.name + ".lock"))

    def _file_replace(self, rel: str, data: bytes) -> str:
        # A temp file and os.replace: a reader sees the old version or the new one, never half of one.
        path = self.root / rel
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return _sha256(data)

    def head_date(self) -> datetime | None:
        """The server's clock (HTTP Date of a bucket request), for skew checks; None for file replicas."""
        if self.scheme == "file":
            return None
        resp = self._s3("head bucket", self._client.head_bucket, Bucket=self.bucket)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        from email.utils import parsedate_to_datetime

        return parsedate_to_datetime(date) if date else None

    def reachable(self) -> None:
        """Raise EnvironmentProblem unless the replica root can be listed."""
        if self.scheme == "file":
            if self.root.exists() and not os.access(self.root, os.R_OK | os.X_OK):
                raise EnvironmentProblem(f"replica {self.url}: not readable")
            return
        self._s3("list", self._client.list_objects_v2, Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Flock:
    """An exclusive flock on a lock file, held for a `with` block (between processes and threads alike)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def replica_keys(settings: Settings, tenants_root: str, global_url: str) -> list[str]:
    """Every database the replica holds, found by listing it: GLOBAL first (when there), then tenant slugs."""
    store = ReplicaStore.from_settings(settings, tenants_root)
    names = store.list_dirs()
    keys = [n for n in names if is_slug(n) and n != settings.global_db_name]
    parent, _, leaf = global_url.rstrip("/").rpartition("/")
    holder = names if parent == store.url else ReplicaStore.from_settings(settings, parent).list_dirs()
    return ([GLOBAL] if leaf in holder else []) + keys


def latest_txids(store: ReplicaStore) -> dict[str, int]:
    """The newest txid of every database under a replica root, from one listing of its LTX files.

    Keys are the databases' paths relative to the root (`acme/honestcam.db`). Handing this txid to
    `litestream restore` spares it about half of the ~42 LISTs it makes to find the latest point.
    """
    newest: dict[str, int] = {}
    for obj in store.walk():
        rel, _, leaf = obj.key.rpartition("/")
        db, _, level = rel.rpartition("/")
        if not (db and level.isdigit() and leaf.endswith(".ltx") and "-" in leaf):
            continue
        try:
            txid = int(leaf[:-4].split("-")[1], 16)
        except ValueError:
            continue
        newest[db] = max(newest.get(db, 0), txid)
    return newest
