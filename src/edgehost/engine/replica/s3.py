"""A replica in an S3 bucket (Cloudflare R2 or any S3 endpoint), through boto3 with R2-safe settings."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from edgehost.engine.replica import (_CONDITION_CODES, ConditionalWritesUnsupported, PreconditionFailed, ReplicaObject,
                                     ReplicaStore, s3_client)
from edgehost.errors import EnvironmentProblem


class S3Store(ReplicaStore):
    scheme = "s3"

    def __init__(self, url: str, endpoint: str = "", region: str = "", environ: dict[str, str] | None = None):
        super().__init__(url)
        parsed = urlparse(self.url)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._client = s3_client(endpoint, region, environ)
        self.list_pages = 0  # LIST requests made, for the reports that count them

    def _key(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    def _call(self, what: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise self._problem(what, exc) from None

    def _problem(self, what: str, exc: Exception) -> EnvironmentProblem:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            return EnvironmentProblem(f"replica {self.url}: {what} failed: {err.get('Code')} {err.get('Message', '')}".strip())
        return EnvironmentProblem(f"replica {self.url}: {what} failed: {exc}")

    def _gone(self, rel: str, exc: ClientError) -> Exception | None:
        """ObjectGone when the error says the key is not there (any more)."""
        from edgehost.engine.bucket import ObjectGone

        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return ObjectGone(f"replica {self.url}: {rel} is gone")
        return None

    def _pages(self, **kw: Any) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self._call("list", self._client.list_objects_v2, Bucket=self.bucket,
                              **kw, **({"ContinuationToken": token} if token else {}))
            self.list_pages += 1
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def list_dirs(self, rel: str = "") -> list[str]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        return sorted(cp["Prefix"][len(prefix):].rstrip("/")
                      for page in self._pages(Prefix=prefix, Delimiter="/") for cp in page.get("CommonPrefixes", []))

    def walk(self, rel: str = "") -> Iterator[ReplicaObject]:
        prefix = self._key(rel)
        prefix = f"{prefix}/" if prefix else ""
        strip = f"{self.prefix}/" if self.prefix else ""
        for page in self._pages(Prefix=prefix):
            for obj in page.get("Contents", []):
                yield ReplicaObject(obj["Key"][len(strip):], obj["Size"], obj["LastModified"], obj.get("ETag", ""))

    def read(self, rel: str) -> bytes:
        return self._call("get", self._client.get_object, Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    def get(self, rel: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        except ClientError as exc:
            raise self._gone(rel, exc) or self._problem("get", exc) from None
        except BotoCoreError as exc:
            raise self._problem("get", exc) from None

    def write(self, rel: str, data: bytes) -> None:
        self._call("put", self._client.put_object, Bucket=self.bucket, Key=self._key(rel), Body=data)

    def delete(self, rel: str) -> None:
        self._call("delete", self._client.delete_object, Bucket=self.bucket, Key=self._key(rel))

    def head(self, rel: str) -> dict[str, Any]:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            raise self._gone(rel, exc) or self._problem("head", exc) from None
        except BotoCoreError as exc:
            raise self._problem("head", exc) from None
        return {"metadata": {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
                "last_modified": resp.get("LastModified")}

    def get_versioned(self, rel: str) -> tuple[bytes, str, float | None] | None:
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
            data = resp["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._problem("get", exc) from None
        except BotoCoreError as exc:
            raise self._problem("get", exc) from None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        age = None
        if date and resp.get("LastModified"):
            age = max(0.0, (parsedate_to_datetime(date) - resp["LastModified"]).total_seconds())
        return data, resp["ETag"], age

    def put_if_absent(self, rel: str, data: bytes) -> str:
        return self._conditional("conditional put", Key=self._key(rel), Body=data, IfNoneMatch="*")

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str:
        return self._conditional("conditional put", Key=self._key(rel), Body=data, IfMatch=etag)

    def _conditional(self, what: str, **kw: Any) -> str:
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
            raise self._problem(what, exc) from None
        except BotoCoreError as exc:
            raise self._problem(what, exc) from None

    def head_date(self) -> datetime | None:
        resp = self._call("head bucket", self._client.head_bucket, Bucket=self.bucket)
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return parsedate_to_datetime(date) if date else None

    def reachable(self) -> None:
        self._call("list", self._client.list_objects_v2, Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
