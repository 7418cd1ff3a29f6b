"""The content-addressed artifact store: one behaviour contract, run against each backend."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from orbiter.models import artifacts
from orbiter.models.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    ArtifactTooLarge,
    ChecksumMismatch,
    LocalArtifactStore,
    open_store,
    parse_digest,
)
from orbiter.models.s3storage import S3ArtifactStore

from tests.fixtures.s3 import S3Server, s3_server  # noqa: F401

KiB = 1024
MiB = 1024 * KiB


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Interrupted(Exception):
    """Raised from on_chunk to cut a download short, as a crash or a dropped link would."""


class RangeSpy:
    """Wraps a store's open_range: counts the bytes the download asked for and got."""

    def __init__(self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requested = 0
        self.calls = 0
        self._inner = store.open_range
        monkeypatch.setattr(store, "open_range", self)

    def __call__(self, digest: str, offset: int, length: int) -> bytes:
        self.calls += 1
        data = self._inner(digest, offset, length)
        self.requested += len(data)
        return data


class StoreContract:
    """What every ArtifactStore does; subclasses provide the ``store`` fixture and a way to
    change an object's bytes behind the store's back."""

    def overwrite(self, store: Any, digest: str, data: bytes) -> None:
        raise NotImplementedError

    def test_put_stat_exists_list_delete(self, store: ArtifactStore) -> None:
        data = payload(1000)
        ref = store.put_bytes(data)
        assert ref.digest == digest_of(data)
        assert ref.size == 1000
        assert ref.uri == store.uri(ref.digest)
        assert ref.uri.endswith(f"sha256/{parse_digest(ref.digest)}")
        assert store.stat(ref.digest) == ref
        assert store.exists(ref.digest)
        other = store.put_bytes(b"another")
        assert sorted(store.list(), key=lambda r: r.digest) == sorted(
            [ref, other], key=lambda r: r.digest
        )
        store.delete(ref.digest)
        assert store.stat(ref.digest) is None
        assert not store.exists(ref.digest)
        assert store.list() == [other]
        store.delete(ref.digest)  # deleting what is gone is not an error

    def test_content_addressed_and_idempotent(
        self, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        writes: list[str] = []
        write = store._write

        def counting_write(hexdigest: str, stream: Any, size: int) -> None:
            writes.append(hexdigest)
            write(hexdigest, stream, size)

        monkeypatch.setattr(store, "_write", counting_write)
        data = payload(300 * KiB, seed=1)
        first = store.put_bytes(data)
        again = store.put_bytes(bytes(data))
        (tmp_path / "model.onnx").write_bytes(data)
        from_file = store.put_file(tmp_path / "model.onnx")
        assert first == again == from_file
        assert writes == [parse_digest(first.digest)]  # stored once, never re-uploaded
        assert store.put_bytes(data + b"!").digest != first.digest
        assert len(writes) == 2

    def test_put_file_refuses_content_that_changed_during_upload(
        self, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The first pass (hashing) sees other bytes than the second (upload): as if the file
        # was rewritten in between. Nothing may end up under the digest of the first pass.
        claimed = payload(2000, seed=2)
        (tmp_path / "m.bin").write_bytes(payload(2000, seed=3))
        monkeypatch.setattr(
            artifacts, "_hash_file", lambda path: (hashlib.sha256(claimed).hexdigest(), 2000)
        )
        with pytest.raises(ArtifactError, match="changed while storing"):
            store.put_file(tmp_path / "m.bin")
        assert store.stat(digest_of(claimed)) is None
        assert store.list() == []

    def test_get_downloads_and_verifies(
        self, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = payload(200 * KiB, seed=4)
        ref = store.put_bytes(data)
        progress: list[tuple[int, int]] = []
        dest = tmp_path / "out" / "model.onnx"
        got = store.get(
            ref.digest, dest, chunk_size=64 * KiB, on_chunk=lambda d, t: progress.append((d, t))
        )
        assert got == dest
        assert dest.read_bytes() == data
        assert [done for done, _ in progress] == [64 * KiB, 128 * KiB, 192 * KiB, ref.size]
        assert {total for _, total in progress} == {ref.size}
        assert list(dest.parent.iterdir()) == [dest]  # no partial left behind
        # An existing verified copy is returned without asking the store at all.
        spy = RangeSpy(store, monkeypatch)
        assert store.get(ref.digest, dest) == dest
        assert spy.calls == 0

    def test_get_replaces_a_wrong_dest(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = payload(5000, seed=5)
        ref = store.put_bytes(data)
        dest = tmp_path / "model.onnx"
        dest.write_bytes(b"stale model")
        store.get(ref.digest, dest)
        assert dest.read_bytes() == data

    def test_interrupted_download_resumes_where_it_stopped(
        self, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        chunk = 64 * KiB
        data = payload(1 * MiB + 123, seed=6)
        ref = store.put_bytes(data)
        dest = tmp_path / "model.onnx"
        partial = tmp_path / "model.onnx.partial"

        def cut_halfway(done: int, total: int) -> None:
            if done >= total // 2:
                raise Interrupted

        with pytest.raises(Interrupted):
            store.get(ref.digest, dest, chunk_size=chunk, on_chunk=cut_halfway)
        assert not dest.exists()
        half = partial.stat().st_size
        assert half == 9 * chunk  # the first chunk boundary past half of 1 MiB + 123
        assert partial.read_bytes() == data[:half]

        spy = RangeSpy(store, monkeypatch)
        store.get(ref.digest, dest, chunk_size=chunk)
        assert spy.requested == len(data) - half  # only the missing tail was fetched
        assert dest.read_bytes() == data
        assert not partial.exists()

    def test_a_corrupt_partial_is_not_trusted(
        self, store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = payload(100 * KiB, seed=7)
        ref = store.put_bytes(data)
        dest = tmp_path / "model.onnx"
        (tmp_path / "model.onnx.partial").write_bytes(b"\0" * (30 * KiB))  # not a prefix
        spy = RangeSpy(store, monkeypatch)
        store.get(ref.digest, dest, chunk_size=16 * KiB)
        assert dest.read_bytes() == data
        assert spy.requested == len(data) - 30 * KiB + len(data)  # tail, then all over again
        assert not (tmp_path / "model.onnx.partial").exists()

    @pytest.mark.parametrize("change", ["flip-one-byte", "truncate", "extend"])
    def test_a_corrupted_object_is_refused(
        self, store: ArtifactStore, tmp_path: Path, change: str
    ) -> None:
        data = payload(150 * KiB, seed=8)
        ref = store.put_bytes(data)
        corrupt = {
            "flip-one-byte": data[:1000] + bytes([data[1000] ^ 1]) + data[1001:],
            "truncate": data[:-1],
            "extend": data + b"\0",
        }[change]
        self.overwrite(store, ref.digest, corrupt)
        dest = tmp_path / "dl" / "model.onnx"
        with pytest.raises(ChecksumMismatch, match="corrupt"):
            store.get(ref.digest, dest, chunk_size=32 * KiB)
        assert list(dest.parent.iterdir()) == []  # neither dest nor a partial

    def test_get_errors(self, store: ArtifactStore, tmp_path: Path) -> None:
        dest = tmp_path / "dl" / "x"
        missing = digest_of(b"never stored")
        with pytest.raises(ArtifactNotFound, match=missing):
            store.get(missing, dest)
        ref = store.put_bytes(payload(4096, seed=9))
        with pytest.raises(ArtifactTooLarge, match="4096 bytes"):
            store.get(ref.digest, dest, max_bytes=4095)
        assert not dest.parent.exists()
        assert store.get(ref.digest, dest, max_bytes=4096).stat().st_size == 4096
        for bad in ["sha256:" + "A" * 64, "md5:abc", "sha256:../../etc/passwd", "0" * 64]:
            with pytest.raises(ValueError, match="not a digest"):
                store.stat(bad)
        assert list(dest.parent.iterdir()) == [dest]


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ArtifactStore]:
        with LocalArtifactStore(tmp_path / "store") as store:
            yield store

    def overwrite(self, store: Any, digest: str, data: bytes) -> None:
        (store.root / "sha256" / parse_digest(digest)).write_bytes(data)

    def test_layout_and_leftover_temp_files(self, store: Any) -> None:
        ref = store.put_bytes(b"onnx bytes")
        assert (store.root / "sha256" / parse_digest(ref.digest)).read_bytes() == b"onnx bytes"
        assert ref.uri == (store.root / "sha256" / parse_digest(ref.digest)).as_uri()
        # What a crash in the middle of a write leaves: a dot-file, never listed.
        (store.root / "sha256" / ".0123456789ab.x.tmp").write_bytes(b"half")
        assert store.list() == [ref]


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_server: S3Server) -> Iterator[ArtifactStore]:  # noqa: F811
        with S3ArtifactStore(
            s3_server.endpoint,
            "orbiter-models",
            s3_server.access_key,
            s3_server.secret_key,
            region=s3_server.region,
            prefix="team-a/models",
        ) as store:
            yield store
        s3_server.reset()  # the server is shared by the module's tests

    def overwrite(self, store: Any, digest: str, data: bytes) -> None:
        import io

        import urllib3
        from minio import Minio

        http = urllib3.PoolManager()
        try:
            client = Minio(store.endpoint, "testing", "testing", secure=False, http_client=http)
            key = f"team-a/models/sha256/{parse_digest(digest)}"
            client.put_object("orbiter-models", key, io.BytesIO(data), len(data))
        finally:
            http.clear()

    def test_objects_live_under_the_prefix_with_their_hash_as_metadata(
        self, store: Any, tmp_path: Path
    ) -> None:
        data = payload(11 * MiB, seed=10)  # above the 8 MiB part size: a multipart upload
        (tmp_path / "big.onnx").write_bytes(data)
        ref = store.put_file(tmp_path / "big.onnx")
        hexdigest = parse_digest(ref.digest)
        assert ref.uri == f"s3://orbiter-models/team-a/models/sha256/{hexdigest}"
        obj = store._client.stat_object("orbiter-models", f"team-a/models/sha256/{hexdigest}")
        assert obj.etag.endswith("-2")  # S3's multipart ETag: two parts
        assert obj.metadata["x-amz-meta-sha256"] == hexdigest
        store.get(ref.digest, tmp_path / "copy.onnx")
        assert (tmp_path / "copy.onnx").read_bytes() == data

    def test_open_store_url(self, s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
        with open_store(s3_server.url("other-bucket", "p/q")) as store:
            assert isinstance(store, S3ArtifactStore)
            assert store.list() == []  # the bucket does not exist yet
            ref = store.put_bytes(b"via url")
            assert ref.uri.startswith("s3://other-bucket/p/q/sha256/")
            assert store.get(ref.digest, tmp_path / "m").read_bytes() == b"via url"

    def test_unreachable_server_is_an_artifact_error(self, s3_server: S3Server) -> None:  # noqa: F811
        import socket

        with socket.socket() as sock:  # a port that is bound but does not listen: refused
            sock.bind(("127.0.0.1", 0))
            endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
            store = S3ArtifactStore(endpoint, "b-b-b", "k", "s", region="us-east-1", retries=0)
            with (
                store,
                pytest.raises(ArtifactError, match=rf"stat s3://b-b-b/sha256/\w+ at {endpoint}"),
            ):
                store.stat(digest_of(b"x"))


class TestOpenStore:
    def test_local_urls(self, tmp_path: Path) -> None:
        for url in [
            str(tmp_path / "a"),
            (tmp_path / "a").as_uri(),
            f"file://localhost{tmp_path}/a",
        ]:
            store = open_store(url)
            assert isinstance(store, LocalArtifactStore)
            assert store.root == tmp_path / "a"

    def test_s3_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        monkeypatch.setenv("MINIO_ACCESS_KEY", "minio")
        monkeypatch.setenv("MINIO_SECRET_KEY", "minio123")
        with open_store("s3://models/a/b/?endpoint=minio:9000&secure=false") as store:
            assert isinstance(store, S3ArtifactStore)
            assert (store.endpoint, store.bucket, store.prefix) == ("minio:9000", "models", "a/b/")
            assert store.secure is False
            empty = hashlib.sha256(b"").hexdigest()
            assert store.uri(digest_of(b"")) == f"s3://models/a/b/sha256/{empty}"
        with open_store("s3://models?region=eu-west-1") as store:
            assert isinstance(store, S3ArtifactStore)
            assert (store.endpoint, store.secure, store.prefix) == ("s3.amazonaws.com", True, "")

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("", "empty"),
            ("ftp://host/x", "unsupported artifact store URL scheme 'ftp'"),
            ("file://otherhost/x", "names host 'otherhost'"),
            ("file:relative/dir", "absolute path"),
            ("s3:///prefix?endpoint=h:1", "has no bucket"),
            ("s3://Bad_Bucket/p?endpoint=h:1", "invalid S3 bucket name 'Bad_Bucket'"),
            ("s3://bucket/p?endpiont=h:1", r"unknown S3 URL parameter\(s\) \['endpiont'\]"),
            ("s3://bucket/p?endpoint=h:1&secure=maybe", "secure='maybe' is not a boolean"),
            ("s3://bucket/p?endpoint=h:1&endpoint=h:2", "'endpoint' needs exactly one value"),
            ("s3://bucket/p?endpoint=http://h:1", "host\\[:port\\]"),
            ("s3://bucket/a/../b?endpoint=h:1", "'..'"),
            ("s3://key:secret@bucket/p", "credentials in .* would end up in logs"),
        ],
    )
    def test_bad_urls(self, url: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        with pytest.raises(ValueError, match=message):
            open_store(url)

    def test_s3_needs_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ["AWS_SECRET_ACCESS_KEY", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"]:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "only-half")
        with pytest.raises(ValueError, match=r"no S3 credentials .* AWS_SECRET_ACCESS_KEY"):
            open_store("s3://bucket/p?endpoint=h:1")
