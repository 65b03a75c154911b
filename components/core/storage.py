"""One small API over local paths (`/abs/dir`, `rel/dir`, `file:///abs`) and S3 (`s3://bucket/prefix`).

This is the only module that calls boto3. Guarantees:
- Atomic writes: a reader never sees a partial file or object. Locally we write a temp file in the
  target folder and `os.replace` it; on S3 a single PUT or a multipart upload that S3 only makes visible
  once completed (boto3's transfer manager aborts the upload on failure).
- Every write returns the sha256 of what was written, for the caller's manifest; reads can verify it.
- Transient S3 errors (connection reset, 5xx, SlowDown) are retried by botocore's "standard" retry mode
  with exponential backoff and jitter; when retries run out, or on a permanent error (403, missing
  bucket or key), a StorageError names the operation and the URI. Credentials never enter a message.

S3 endpoint, region and credentials come from the standard AWS environment and config files
(`AWS_ENDPOINT_URL` for MinIO-style endpoints), exactly as the AWS CLI reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

# Retries: attempts include the first try. Overridable for slow or flaky links.
S3_MAX_ATTEMPTS = int(os.environ.get("T2V_S3_MAX_ATTEMPTS", "6"))
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
_READ_CHUNK = 4 * 1024 * 1024

# Error codes that will not go away by retrying: fail at once.
_PERMANENT_CODES = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "NoSuchBucket", "NoSuchKey", "404", "NotFound", "InvalidBucketName",
}


class StorageError(RuntimeError):
    """An artifact-store operation failed; the message names the operation and the URI."""


class ChecksumMismatch(StorageError):
    """What was read does not have the sha256 the caller's manifest recorded."""


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def _local_path(uri: str | Path) -> Path:
    text = str(uri)
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    return Path(text)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"S3 URI without a bucket: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or S3 URI (no normalisation of `..`)."""
    text = str(base).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            text = f"{text}/{part}"
    return text


def relative_to(uri: str, base: str) -> str:
    """The part of `uri` below `base` (both local or both S3)."""
    uri_s, base_s = str(uri).rstrip("/"), str(base).rstrip("/")
    if not (uri_s == base_s or uri_s.startswith(base_s + "/")):
        raise StorageError(f"{uri} is not below {base}")
    return uri_s[len(base_s) + 1 :]


# --------------------------------------------------------------------------- checksums


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_READ_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(uri: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatch(f"checksum mismatch for {uri}: expected sha256 {expected}, got {actual}")


# --------------------------------------------------------------------------- S3 client


@functools.cache
def _s3_client():
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        connect_timeout=10,
        read_timeout=60,
        # MinIO-style endpoints and moto expect path-style addressing; AWS accepts it too.
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", config=config)


def reset_clients() -> None:
    """Forget cached clients, e.g. after tests change AWS_* environment variables."""
    _s3_client.cache_clear()


def _s3_error(op: str, uri: str, exc: Exception) -> StorageError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        kind = "permanent error" if code in _PERMANENT_CODES else f"error after {S3_MAX_ATTEMPTS} attempts"
        return StorageError(f"{op} {uri} failed ({kind}): {code} (HTTP {status})")
    # Connection-level errors reach here only after botocore's retries are exhausted.
    return StorageError(f"{op} {uri} failed after {S3_MAX_ATTEMPTS} attempts: {type(exc).__name__}: {exc}")


def _s3_call(op: str, uri: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(op, uri, exc) from None


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)


# --------------------------------------------------------------------------- writes


def _atomic_local_write(path: Path, write: callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(uri: str | Path, data: bytes) -> str:
    """Write `data` atomically to `uri`; return its sha256."""
    digest = sha256_bytes(data)
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        if len(data) >= MULTIPART_THRESHOLD:
            _s3_call("upload", str(uri), _s3_client().upload_fileobj, io.BytesIO(data), bucket, key,
                     ExtraArgs={"Metadata": {"sha256": digest}}, Config=_transfer_config())
        else:
            _s3_call("put", str(uri), _s3_client().put_object, Bucket=bucket, Key=key, Body=data,
                     Metadata={"sha256": digest})
    else:
        _atomic_local_write(_local_path(uri), lambda handle: handle.write(data))
    return digest


def write_text(uri: str | Path, text: str) -> str:
    return write_bytes(uri, text.encode())


def write_json(uri: str | Path, obj: Any) -> str:
    """Write pretty, key-sorted JSON (stable bytes, so equal content gives equal checksums)."""
    return write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def put_file(local_path: str | Path, uri: str | Path) -> str:
    """Copy a local file to `uri` atomically (multipart on S3 for large files); return its sha256."""
    digest = sha256_file(local_path)
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        _s3_call("upload", str(uri), _s3_client().upload_file, str(local_path), bucket, key,
                 ExtraArgs={"Metadata": {"sha256": digest}}, Config=_transfer_config())
    else:
        target = _local_path(uri)
        if target.resolve() != Path(local_path).resolve():
            def copy(handle: BinaryIO) -> None:
                with open(local_path, "rb") as source:
                    shutil.copyfileobj(source, handle, _READ_CHUNK)

            _atomic_local_write(target, copy)
    return digest


# --------------------------------------------------------------------------- reads


def read_bytes(uri: str | Path, expected_sha256: str | None = None) -> bytes:
    """Read a whole object; verify its sha256 when the caller knows it."""
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        response = _s3_call("get", str(uri), _s3_client().get_object, Bucket=bucket, Key=key)
        data = _s3_call("get", str(uri), response["Body"].read)
    else:
        path = _local_path(uri)
        if not path.is_file():
            raise StorageError(f"read {uri} failed: no such file")
        data = path.read_bytes()
    _check(str(uri), sha256_bytes(data), expected_sha256)
    return data


def read_text(uri: str | Path, expected_sha256: str | None = None) -> str:
    return read_bytes(uri, expected_sha256).decode()


def read_json(uri: str | Path, expected_sha256: str | None = None) -> Any:
    try:
        return json.loads(read_bytes(uri, expected_sha256))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from None


def get_file(uri: str | Path, local_path: str | Path, expected_sha256: str | None = None) -> Path:
    """Copy `uri` to a local file atomically; verify the sha256 when given. Returns the local path."""
    local_path = Path(local_path)
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.tmp-{uuid.uuid4().hex}")
        try:
            _s3_call("download", str(uri), _s3_client().download_file, bucket, key, str(tmp),
                     Config=_transfer_config())
            _check(str(uri), sha256_file(tmp), expected_sha256)
            os.replace(tmp, local_path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        source = _local_path(uri)
        if not source.is_file():
            raise StorageError(f"read {uri} failed: no such file")
        _check(str(uri), sha256_file(source), expected_sha256)
        if source.resolve() != local_path.resolve():
            _atomic_local_write(local_path, lambda handle: handle.write(source.read_bytes()))
    return local_path


def open_stream(uri: str | Path) -> BinaryIO:
    """A forward-only binary stream over the object, without downloading it first (for tar shards)."""
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        response = _s3_call("get", str(uri), _s3_client().get_object, Bucket=bucket, Key=key)
        return response["Body"]
    path = _local_path(uri)
    if not path.is_file():
        raise StorageError(f"read {uri} failed: no such file")
    return open(path, "rb")


# --------------------------------------------------------------------------- listing


def exists(uri: str | Path) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(str(uri))
        try:
            _s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _s3_error("head", str(uri), exc) from None
    return _local_path(uri).is_file()


def list_files(prefix: str | Path) -> list[str]:
    """Every file (object) below `prefix`, recursively, as full URIs, sorted. Temp files are skipped."""
    if is_s3(prefix):
        bucket, key = _split_s3(str(prefix))
        key = key.rstrip("/") + "/" if key else ""
        paginator = _s3_client().get_paginator("list_objects_v2")
        uris = []
        for page in _s3_call("list", str(prefix), lambda: list(paginator.paginate(Bucket=bucket, Prefix=key))):
            uris += [f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", [])]
        return sorted(uris)
    root = _local_path(prefix)
    if not root.is_dir():
        return []
    base = str(prefix).rstrip("/")
    return sorted(
        join(base, str(path.relative_to(root)))
        for path in root.rglob("*")
        if path.is_file() and ".tmp-" not in path.name
    )


def delete(uri: str | Path) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(str(uri))
        _s3_call("delete", str(uri), _s3_client().delete_object, Bucket=bucket, Key=key)
    else:
        _local_path(uri).unlink(missing_ok=True)


def delete_prefix(prefix: str | Path) -> None:
    """Remove everything below `prefix` (a stage's half-written output, for instance)."""
    if is_s3(prefix):
        for uri in list_files(prefix):
            delete(uri)
    else:
        shutil.rmtree(_local_path(prefix), ignore_errors=True)


# --------------------------------------------------------------------------- conditional writes
# Compare-and-swap on one object, for claims such as an output folder's lease (`components.core.lease`).
# A version is what a later conditional write compares against: the ETag on S3, the sha256 locally.

_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _precondition_failed(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _PRECONDITION_CODES


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on a local folder: local compare-and-swaps run one at a time (the kernel drops
    the lock of a killed process)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def create_exclusive(uri: str | Path, data: bytes) -> str | None:
    """Write `data` to `uri` only when nothing is there: its version, or None when something is. S3: a
    PutObject with `If-None-Match: *`; locally a complete temp file hard-linked to the name (which fails
    when the name exists), so a reader never sees it half-written."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(str(uri))
        try:
            return _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
        except (ClientError, BotoCoreError) as exc:
            if _precondition_failed(exc):
                return None
            raise _s3_error("create", str(uri), exc) from None
    path = _local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        return sha256_bytes(data)
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)


def read_versioned(uri: str | Path) -> tuple[bytes, str] | None:
    """`(data, version)` of `uri`, or None when it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = _split_s3(str(uri))
        try:
            response = _s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _s3_error("get", str(uri), exc) from None
        return _s3_call("get", str(uri), response["Body"].read), response["ETag"]
    path = _local_path(uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data, sha256_bytes(data)


def replace_if_unchanged(uri: str | Path, data: bytes, version: str) -> str | None:
    """Overwrite `uri` with `data` only if it still has `version`: the new version, or None when it
    changed or is gone."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(str(uri))
        try:
            return _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=version)["ETag"]
        except (ClientError, BotoCoreError) as exc:
            if _precondition_failed(exc) or "NoSuchKey" in str(exc):
                return None
            raise _s3_error("replace", str(uri), exc) from None
    path = _local_path(uri)
    with _folder_lock(path.parent):
        current = read_versioned(path)
        if current is None or current[1] != version:
            return None
        _atomic_local_write(path, lambda handle: handle.write(data))
        return sha256_bytes(data)


def delete_if_unchanged(uri: str | Path, version: str) -> bool:
    """Delete `uri` only if it still has `version`; False when it changed or is gone."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(str(uri))
        try:
            _s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=version)
            return True
        except (ClientError, BotoCoreError) as exc:
            if _precondition_failed(exc) or "NoSuchKey" in str(exc):
                return False
            raise _s3_error("delete", str(uri), exc) from None
    path = _local_path(uri)
    with _folder_lock(path.parent):
        current = read_versioned(path)
        if current is None or current[1] != version:
            return False
        path.unlink()
        return True


# --------------------------------------------------------------------------- local staging


def local_dir(uri: str | Path) -> Path | None:
    """The local folder behind `uri`, or None for S3 (callers then stage through a temp folder)."""
    return None if is_s3(uri) else _local_path(uri)


def staging_dir(prefix: str = "t2v-") -> tempfile.TemporaryDirectory:
    """A temp folder for building files before they are put into the store."""
    return tempfile.TemporaryDirectory(prefix=prefix)

