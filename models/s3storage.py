"""The S3 backend of the artifact store, on the minio client (MinIO or any S3 server).

Objects live at ``<prefix>sha256/<hex>``; uploads are multipart for large files, downloads are
ranged reads, so the store's resumable, verified ``get`` works the same as on local disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import BinaryIO, cast

from .artifacts import (
    _BUCKET,
    _HEX,
    PART_SIZE,
    ArtifactError,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    _HashingReader,
    parse_digest,
)

__all__ = ["S3ArtifactStore"]


class S3ArtifactStore(ArtifactStore):
    """Objects at ``<prefix>sha256/<hex>`` in an S3 bucket, through the minio client.

    The bucket is created on the first write if missing. Call ``close()`` (or use ``with``)
    to drop the pooled keep-alive connections.
    """

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str | None = None,
        prefix: str = "",
        part_size: int = PART_SIZE,
        timeout: float = 300.0,
        retries: int = 3,
    ) -> None:
        import urllib3
        from minio import Minio

        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if not 5 * 1024 * 1024 <= part_size <= 5 * 1024**3:
            raise ValueError(f"S3 part_size must be between 5 MiB and 5 GiB, not {part_size}")
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.secure = secure
        self.region = region
        self.part_size = part_size
        # Our own pool so close() can release it; minio would otherwise only do so in __del__.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
            maxsize=4,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        self._bucket_ready = False

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3ArtifactStore('s3://{self.bucket}/{self.prefix}' at {scheme}://{self.endpoint})"

    def close(self) -> None:
        self._http.clear()

    def _key(self, digest: str) -> str:
        return f"{self.prefix}sha256/{parse_digest(digest)}"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn minio and urllib3 failures into ArtifactError with S3's own message."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            yield
        except S3Error as e:
            raise ArtifactError(
                f"S3 {action} s3://{self.bucket}/{key} at {self.endpoint}: {e.code}: {e.message}"
            ) from e
        except (MinioException, urllib3.exceptions.HTTPError) as e:
            raise ArtifactError(
                f"S3 {action} s3://{self.bucket}/{key} at {self.endpoint}: {e}"
            ) from e

    def _ensure_bucket(self) -> None:
        from minio.error import S3Error

        if self._bucket_ready:
            return
        with self._errors("create bucket", ""):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, location=self.region)
                except S3Error as e:  # another writer created it meanwhile
                    if e.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
        self._bucket_ready = True

    def stat(self, digest: str) -> ArtifactRef | None:
        from minio.error import S3Error

        key = self._key(digest)
        with self._errors("stat", key):
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as e:
                if e.code in {"NoSuchKey", "NoSuchBucket", "NotFound"}:
                    return None
                raise
        return ArtifactRef(digest, int(obj.size or 0), self.uri(digest))

    def list(self) -> list[ArtifactRef]:
        from minio.error import S3Error

        base = f"{self.prefix}sha256/"
        refs = []
        with self._errors("list", base):
            try:
                for obj in self._client.list_objects(self.bucket, prefix=base, recursive=True):
                    name = (obj.object_name or "")[len(base) :]
                    if _HEX.fullmatch(name):
                        digest = f"sha256:{name}"
                        refs.append(ArtifactRef(digest, int(obj.size or 0), self.uri(digest)))
            except S3Error as e:
                if e.code != "NoSuchBucket":
                    raise
        return refs

    def open_range(self, digest: str, offset: int, length: int) -> bytes:
        from minio.error import S3Error

        if length <= 0:
            return b""  # minio reads "length 0" as "to the end"
        key = self._key(digest)
        with self._errors("read", key):
            try:
                response = self._client.get_object(self.bucket, key, offset=offset, length=length)
            except S3Error as e:
                if e.code in {"NoSuchKey", "NoSuchBucket"}:
                    raise ArtifactNotFound(f"{digest} is not in {self!r}") from None
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

    def delete(self, digest: str) -> None:
        from minio.error import S3Error

        key = self._key(digest)
        with self._errors("delete", key):
            try:
                self._client.remove_object(self.bucket, key)
            except S3Error as e:
                if e.code != "NoSuchBucket":
                    raise

    def uri(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self._key(digest)}"

    def _write(self, hexdigest: str, stream: _HashingReader, size: int) -> None:
        self._ensure_bucket()
        key = self._key(f"sha256:{hexdigest}")
        with self._errors("upload", key):
            # One upload at a time: minio's parallel parts would start threads and hold
            # several parts in memory; above part_size this is a multipart upload.
            self._client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, stream),  # minio only calls read()
                length=size,
                part_size=self.part_size,
                metadata={"sha256": hexdigest},
                num_parallel_uploads=1,
            )
        try:
            stream.check(hexdigest, size)
        except ArtifactError:
            self.delete(f"sha256:{hexdigest}")  # never leave wrong bytes under the key
            raise


def _normalise_prefix(prefix: str) -> str:
    parts = [p for p in prefix.split("/") if p]
    if any(p in {".", ".."} for p in parts):
        raise ValueError(f"S3 prefix {prefix!r} must not contain '.' or '..' segments")
    return "".join(f"{p}/" for p in parts)
