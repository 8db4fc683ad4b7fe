"""Cold storage for expired threads: one compressed (and, with a key, encrypted) object each.

An archived thread is its record and its whole state (transcript, summary, bookkeeping) packed
with LangGraph's serializer, gzip-compressed, then passed through the deployment's serializer,
which seals it with the AES key when one is set: with encryption on, nothing in the archive is
plaintext but a header naming the format. Objects are named by a hash of the thread key, so
the store's listing names no thread, tenant or user, and erasure finds an object without a
record. With a key, an object is bound to its name (see `places`): copied under another
thread's name, it is refused rather than restored there.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from threadline.checkpointers.places import archive_place
from threadline.checkpointers.records import ThreadRecord
from threadline.checkpointers.serde import dumps_at, loads_at

MAGIC = b"threadline-archive/1\n"
SUFFIX = ".tla"
_PACKER = JsonPlusSerializer()


class ArchiveError(RuntimeError):
    """The archive could not be written, read back or decoded; nothing was deleted."""


class ArchiveStore(Protocol):
    """Where archived threads go. Writes replace an object whole; reads see whole objects."""

    url: str

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None: ...

    async def delete(self, name: str) -> None: ...

    async def names(self) -> list[str]:
        """Every archived thread's object name."""
        ...


def object_name(thread_key: str) -> str:
    return hashlib.sha256(f"threadline-archive\0{thread_key}".encode()).hexdigest() + SUFFIX


@dataclass(frozen=True)
class ArchivedThread:
    record: ThreadRecord
    values: dict[str, Any]  # the thread's state, as `aget_state` reads it

    def seal(self, serde: SerializerProtocol, name: str) -> bytes:
        """The object to store under `name` (its encryption bound to that name)."""
        _, packed = _PACKER.dumps_typed({"record": asdict(self.record), "values": self.values})
        kind, blob = dumps_at(serde, gzip.compress(packed, compresslevel=6), archive_place(name))
        header = {"type": kind, "sha256": hashlib.sha256(blob).hexdigest(), "name": name}
        return MAGIC + json.dumps(header).encode() + b"\n" + blob

    @classmethod
    def unseal(
        cls, data: bytes, serde: SerializerProtocol, *, name: str | None = None
    ) -> ArchivedThread:
        """The thread in `data`, read as the object `name` (default: the name it was sealed
        for); ArchiveError if it is not a whole, readable archive, or belongs elsewhere."""
        try:
            if not data.startswith(MAGIC):
                raise ValueError("not a threadline archive")
            header_line, blob = data[len(MAGIC) :].split(b"\n", 1)
            header = json.loads(header_line)
            if hashlib.sha256(blob).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            typed = (header["type"], blob)
            sealed_for = header.get("name")  # objects written before binding have none
            if name is not None and sealed_for not in (None, name):
                raise ValueError("the object was sealed for another thread")
            if sealed_for is None:
                sealed = serde.loads_typed(typed)
            else:
                sealed = loads_at(serde, typed, archive_place(name or sealed_for))
            packed = gzip.decompress(sealed)
            document = _PACKER.loads_typed(("msgpack", packed))
            return cls(ThreadRecord(**document["record"]), dict(document["values"]))
        except ArchiveError:
            raise
        except Exception as exc:  # any decoding failure means: not a readable archive
            raise ArchiveError(f"unreadable archive ({type(exc).__name__}: {exc})") from None


class FileArchive:
    """`file:///path`: one file per thread, written to a temporary name, synced, renamed."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, name, data)

    def _put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.root / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def get(self, name: str) -> bytes | None:
        path = self.root / name
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, name: str) -> None:
        await asyncio.to_thread((self.root / name).unlink, missing_ok=True)

    async def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name.endswith(SUFFIX))


class S3Archive:
    """`s3://bucket/prefix` through boto3: endpoint, region and credentials come from the
    standard AWS settings (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, profiles...),
    so any S3-compatible store works."""

    def __init__(self, bucket: str, prefix: str, url: str) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = url
        self._client = boto3.client("s3")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(
            self._client.put_object, Bucket=self.bucket, Key=self._key(name), Body=data
        )

    async def get(self, name: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                found = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            except self._client.exceptions.NoSuchKey:
                return None
            body: bytes = found["Body"].read()
            return body

        return await asyncio.to_thread(read)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=self._key(name))

    async def names(self) -> list[str]:
        def listed() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key("")
            )
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            return sorted(k.rsplit("/", 1)[-1] for k in keys if k.endswith(SUFFIX))

        return await asyncio.to_thread(listed)


def sealed_with(data: bytes) -> str:
    """The serializer type tag an archive object's header names (`bytes+aes-<id>`)."""
    header_line = data[len(MAGIC) :].split(b"\n", 1)[0]
    return str(json.loads(header_line)["type"])


async def reseal_all(
    store: ArchiveStore, serde: SerializerProtocol, current_cipher: str
) -> tuple[int, int]:
    """Re-seal every object not sealed under `current_cipher` (after a key rotation, or to
    bind objects written before binding); (objects re-sealed, objects seen). Each object is
    replaced whole."""
    resealed = 0
    names = await store.names()
    for name in names:
        data = await store.get(name)
        if data is None or sealed_with(data).partition("+")[2] in ("", current_cipher):
            continue
        await store.put(name, ArchivedThread.unseal(data, serde, name=name).seal(serde, name))
        resealed += 1
    return resealed, len(names)


def open_archive(url: str | None) -> ArchiveStore | None:
    """The store `THREADLINE_ARCHIVE_URL` names (None when it is unset)."""
    if url is None:
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileArchive(Path(parsed.path), url)
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Archive(parsed.netloc, parsed.path, url)
    raise ValueError(f"unsupported archive URL {url!r}: use file:///path or s3://bucket/prefix")
