"""One object-store interface with two implementations: a local folder and an S3 bucket.

Everything above this layer (converter, evidence, sensors) speaks in keys relative to a store,
so the same code runs against `$ETL_OBSERVER_HOME/landing` and `s3://landing-bucket/`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Local: inode change time (set on create, write and rename, so a `cp -p` still looks new);
    # S3: LastModified. Nanoseconds since the epoch in both.
    modified_ns: int
    etag: str


class ObjectStore(Protocol):
    def uri(self, key: str) -> str: ...
    def open_input(self, key: str) -> BinaryIO: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def put_file(self, local_path: str | Path, key: str, content_type: str = "application/octet-stream") -> None: ...
    def delete(self, key: str) -> None: ...
    def sha256(self, key: str) -> str: ...
    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]: ...
    def put_bytes_if(self, key: str, data: bytes, if_match: str | None, content_type: str = "application/json") -> bool: ...


def sha256_stream(stream: BinaryIO, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def _check_key(key: str) -> str:
    if key.startswith("/") or any(part in ("..", "") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStore:
    """A folder standing in for a bucket. Writes are atomic: temp name in the same folder, then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def open_input(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if ".tmp-" in name or (name.startswith(".") and name.endswith(".lock")):
                    continue  # an atomic write in progress, or a compare-and-swap lock
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue  # deleted between listing and stat
                yield ObjectInfo(key=key, size=st.st_size, modified_ns=max(st.st_ctime_ns, st.st_mtime_ns),
                                 etag=f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final, final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex}")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        final, tmp = self._atomic_target(key)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, local_path: str | Path, key: str, content_type: str = "application/octet-stream") -> None:
        final, tmp = self._atomic_target(key)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def sha256(self, key: str) -> str:
        return sha256_file(self.path(key))

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """Content and a version tag (its SHA-256), for a compare-and-swap with put_bytes_if."""
        path = self.path(key)
        if not path.is_file():
            return None, None
        data = path.read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes_if(self, key: str, data: bytes, if_match: str | None, content_type: str = "application/json") -> bool:
        """Write only if the object is still at version `if_match` (None: only if it does not exist)."""
        import fcntl

        lock_path = self.path(key).with_name(f".{self.path(key).name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.get_versioned(key)[1] != if_match:
                return False
            self.put_bytes(key, data, content_type)
            return True


class S3Store:
    """An S3 bucket (optionally under a prefix). The client honours AWS_ENDPOINT_URL[_S3]."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client

    def __repr__(self) -> str:
        return f"S3Store('s3://{self.bucket}/{self.prefix}')"

    def _full(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def open_input(self, key: str) -> BinaryIO:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Paginated: a landing bucket easily holds more than the 1,000 keys of one page.
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                modified = obj["LastModified"]
                yield ObjectInfo(key=key, size=obj["Size"], modified_ns=int(modified.timestamp() * 1_000_000) * 1000,
                                 etag=obj.get("ETag", "").strip('"'))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type)

    def put_file(self, local_path: str | Path, key: str, content_type: str = "application/octet-stream") -> None:
        # upload_file uses multipart for large files; S3 makes the object visible only when the
        # upload completes, so readers never see a half-written Parquet file.
        self.client.upload_file(str(local_path), self.bucket, self._full(key),
                                ExtraArgs={"ContentType": content_type})

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def sha256(self, key: str) -> str:
        return sha256_stream(self.open_input(key))

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except self.client.exceptions.NoSuchKey:
            return None, None
        return response["Body"].read(), response["ETag"]

    def put_bytes_if(self, key: str, data: bytes, if_match: str | None, content_type: str = "application/json") -> bool:
        """S3 conditional write (If-Match / If-None-Match): two writers cannot both win."""
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type,
                                   **condition)
            return True
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key
