"""Storage seam: atomic local writes, and object stores (folders or S3 through boto3).

Every write goes to a temporary file and is renamed into place, so a reader (or DVC) never
sees half a file, and a crash leaves the old version intact. A temporary file is never
created inside a DVC-tracked folder (a killed run would leave it there, counted in every
later data version): writers into those folders pass ``staging`` (``.mlops/staging`` of the
workspace, on the same filesystem), and :func:`clean_stale_temp` removes what a killed
process left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines.errors import StepError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def local_path(uri: str) -> Path:
    """``file:///x`` or a plain path -> Path. Other schemes are not readable here."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ValueError(f"unsupported storage URI {uri!r}: expected file:// or a local path")


def _temp_for(path: Path, staging: Path | None) -> str:
    """A new temporary file for ``path``: in ``staging`` when given, else beside ``path``.
    Its name carries this process's pid, so a stale one can be told from a live one."""
    folder = staging or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return tmp


def _finish(tmp: str, path: Path, write: Any) -> None:
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, staging: Path | None = None) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    _finish(_temp_for(path, staging), path, write)


def atomic_write_text(path: Path, text: str, staging: Path | None = None) -> None:
    atomic_write_bytes(path, text.encode(), staging)


def atomic_write_with(path: Path, write: Any, staging: Path | None = None) -> None:
    """``write(tmp)`` writes the new content to a temporary file, which then replaces ``path``."""
    _finish(_temp_for(path, staging), path, write)


def atomic_copy(src: Path, dest: Path, staging: Path | None = None) -> None:
    atomic_write_with(dest, lambda tmp: shutil.copyfile(src, tmp), staging)


def atomic_write_parquet(path: Path, frame: object, staging: Path | None = None) -> None:
    """Write a DataFrame as Parquet atomically (no index, stable bytes for DVC hashing)."""
    atomic_write_with(path, lambda tmp: frame.to_parquet(tmp, index=False), staging)  # type: ignore[attr-defined]


def clean_stale_temp(*folders: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove temporary files left by processes that are gone (their pid is in the name;
    unparsable names count as stale once older than ``min_age_s``). Returns what it removed."""
    from pipelines.locks import pid_alive

    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
            parts = tmp.name.rsplit(".", 3)  # .<name>.<pid>.<random>.tmp
            try:
                pid = int(parts[-3])
            except (ValueError, IndexError):
                pid = -1
            if pid > 0 and pid_alive(pid):
                continue
            if pid <= 0 and time.time() - tmp.stat().st_mtime < min_age_s:
                continue
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) left by a killed run: %s", len(removed),
                 ", ".join(str(p) for p in removed[:5]))  # fmt: skip
    return removed


# --------------------------------------------------------------------------------------
# Object stores: where the pipeline publishes what other hosts read (validated batches,
# quarantined batches, reports, prediction logs) and where landing zones live.
#
#   file:///srv/flights or /srv/flights   a folder (the embedded default)
#   s3://bucket/prefix                    S3 or an S3-compatible store, through boto3
#
# S3 settings are the standard AWS ones and never live in the repo: credentials and region
# from AWS_* (or any boto3 credential source), the endpoint of an S3-compatible store from
# AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. MLOPS_S3_MAX_ATTEMPTS (default 5) bounds the
# retries (boto3's "standard" mode: exponential back-off with jitter on throttling, 5xx,
# timeouts and refused connections). Every object is written in one PUT, so a reader sees
# the whole object or none of it.
# --------------------------------------------------------------------------------------


class StorageError(StepError):
    """A store could not be read or written; the message is one line naming what and why."""


class ObjectStore:
    """A flat key space under one URI; keys use ``/``."""

    uri: str

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, path.read_bytes())

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if no object has it (a conditional write): True if this call
        created it, False if it existed. Two writers racing for one key: exactly one wins."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`FileNotFoundError` when there is none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Fail with a clear :class:`StorageError` unless the store can be listed."""
        self.keys("__mlops_check__/")

    def put_tree(self, prefix: str, folder: Path) -> list[str]:
        """Publish every file under ``folder`` at ``prefix/<relative path>``; returns the keys.

        If a PUT fails, the objects this call already wrote are deleted again (best effort),
        so a failed publish leaves no partial set behind.
        """
        written: list[str] = []
        try:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
                self.put_file(key, path)
                written.append(key)
        except BaseException:
            self.delete_quietly(written)
            raise
        return written

    def delete_quietly(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.delete(key)
            except Exception as exc:  # the store may be the thing that failed
                log.warning("could not delete %s after a failed publish: %s", self.url(key), exc)


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        atomic_copy(path, self._path(key))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        tmp = _temp_for(target, None)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, target)  # atomic, and fails if the name exists
            except FileExistsError:
                return False
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"store {self.uri}: not a folder")


class S3Store(ObjectStore):
    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if not self.bucket:
            raise StorageError(f"store {uri!r}: expected s3://bucket/prefix")
        self.attempts = int(os.environ.get("MLOPS_S3_MAX_ATTEMPTS", "5"))
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": self.attempts, "mode": "standard"},
                connect_timeout=float(os.environ.get("MLOPS_S3_CONNECT_TIMEOUT", "5")),
                read_timeout=float(os.environ.get("MLOPS_S3_READ_TIMEOUT", "60")),
            )
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(describe_s3_error(exc, action, f"s3://{self.bucket}/{self._key(key)}",
                                              self.endpoint, self.attempts))  # fmt: skip

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def put_file(self, key: str, path: Path) -> None:
        # one PUT (not multipart): the object appears whole or not at all
        self.put_bytes(key, path.read_bytes())

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        # S3 conditional writes (If-None-Match: *): AWS S3 since 2024, MinIO, moto
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except Exception as exc:
            if _s3_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise self._fail("write", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(answer["Body"].read())
        except Exception as exc:
            if _s3_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.url(key)) from None
            raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if _s3_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("read", key, exc) from exc

    def keys(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return sorted(obj["Key"][strip:] for page in pages for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc


def _s3_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def describe_s3_error(exc: Exception, action: str, url: str, endpoint: str, attempts: int) -> str:
    """One line a person can act on, for any error boto3 raises."""
    from botocore import exceptions as bx

    code = _s3_code(exc)
    bucket = url.split("/")[2]
    if code == "NoSuchBucket":
        return f"cannot {action} {url}: bucket {bucket!r} does not exist at {endpoint}"
    if code in (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AccessDenied",
        "403",
    ):
        return (f"cannot {action} {url}: {endpoint} refused the credentials ({code}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE")  # fmt: skip
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return f"cannot {action} {url}: no AWS credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ReadTimeoutError
                  | bx.ConnectTimeoutError):  # fmt: skip
        return f"cannot {action} {url}: S3 endpoint {endpoint} unreachable after {attempts} attempts ({type(exc).__name__})"
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"cannot {action} {url}: {code} {message}".strip()
    return f"cannot {action} {url}: {type(exc).__name__}: {exc}"


def open_store(uri: str) -> ObjectStore:
    """``s3://bucket/prefix``, ``file:///path`` or a local path -> its store."""
    if uri.startswith("s3://"):
        return S3Store(uri)
    try:
        return LocalStore(local_path(uri))
    except ValueError as exc:
        raise StorageError(f"{exc} or s3://bucket/prefix") from None
