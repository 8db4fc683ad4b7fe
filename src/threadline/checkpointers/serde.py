"""Serializers for every tier: one choice, so encryption at rest covers all of them.

With a key set, the durable tier also seals what the stock Postgres saver keeps as plaintext
JSONB (checkpoint metadata, and primitive channel values such as a `str` summary): see
`ValueSealer`. Metadata stays filterable through keyed MACs of its top-level scalar values,
which reveal equality, never content.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from threadline.checkpointers.places import Place

AES_KEY_LENGTHS = (16, 24, 32)
SEALED = "$enc"
SEALED_INDEX = "$idx"
# Metadata keys whose mere presence the stock prune queries test for (DeltaChannel threads).
PRESENCE_KEYS = ("counters_since_delta_snapshot", "delta_writes_versioned")


class UnencryptedDataError(ValueError):
    """Stored data was written without encryption although a key is configured."""


class StrictEncryptedSerializer(EncryptedSerializer):
    """AES (EAX) like LangGraph's own, but refuses plaintext rows instead of reading them,
    and binds values to their place (see `places`) through `dumps_at`/`loads_at`.

    `index_key` (derived from the AES key) lets the durable tier index sealed metadata.
    """

    cipher: KeyRing

    def __init__(
        self,
        cipher: KeyRing,
        serde: SerializerProtocol | None = None,
        *,
        index_key: bytes | None = None,
    ) -> None:
        super().__init__(cipher, serde or JsonPlusSerializer())
        self.index_key = index_key

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_tag = data[0]
        if "+" not in type_tag and type_tag not in ("null", "empty"):
            raise UnencryptedDataError(
                "refusing to read an unencrypted checkpoint value while THREADLINE_AES_KEY is set"
            )
        return super().loads_typed(data)

    def dumps_at(self, obj: Any, place: Place) -> tuple[str, bytes]:
        type_tag, data = self.serde.dumps_typed(obj)
        cipher_name, ciphertext = self.cipher.encrypt(data, place)
        return f"{type_tag}+{cipher_name}", ciphertext

    def loads_at(self, data: tuple[str, bytes], place: Place) -> Any:
        type_tag, blob = data
        if "+" not in type_tag:
            return self.loads_typed(data)  # null/empty markers; plaintext is refused there
        base, cipher_name = type_tag.split("+", 1)
        return self.serde.loads_typed((base, self.cipher.decrypt(cipher_name, blob, place)))


def dumps_at(serde: SerializerProtocol, obj: Any, place: Place) -> tuple[str, bytes]:
    """`obj` serialised for `place`: bound to it when `serde` encrypts."""
    if isinstance(serde, StrictEncryptedSerializer):
        return serde.dumps_at(obj, place)
    return serde.dumps_typed(obj)


def loads_at(serde: SerializerProtocol, data: tuple[str, bytes], place: Place) -> Any:
    """A value read from `place`; a bound value stored elsewhere is refused."""
    if isinstance(serde, StrictEncryptedSerializer):
        return serde.loads_at(data, place)
    return serde.loads_typed(data)


def rebound(
    serde: SerializerProtocol, data: tuple[str, bytes], old: Place, new: Place
) -> tuple[str, bytes]:
    """A stored value moved from `old` to `new` (a copy, a rotation), re-encrypted at the cipher
    level: decrypted where it was, encrypted for where it goes, never deserialised."""
    type_tag, blob = data
    if not isinstance(serde, StrictEncryptedSerializer) or "+" not in type_tag:
        return data
    base, cipher_name = type_tag.split("+", 1)
    ring = serde.cipher
    try:
        plaintext = ring.decrypt(cipher_name, blob, old)
    except MisplacedValueError:
        ring.decrypt(cipher_name, blob, new)  # already where it goes (else: refused)
        return data
    new_name, ciphertext = ring.encrypt(plaintext, new)
    return f"{base}+{new_name}", ciphertext


def rebound_envelope(
    serde: SerializerProtocol, envelope: list[str], old: Place, new: Place
) -> list[str]:
    """`rebound` for a JSON envelope (see `ValueSealer.seal`)."""
    type_tag, blob = rebound(serde, (envelope[0], base64.b64decode(envelope[1])), old, new)
    return [type_tag, base64.b64encode(blob).decode()]


class MisplacedValueError(ValueError):
    """An encrypted value was found somewhere it was not written (copied from another thread,
    checkpoint or channel), or was altered: it is refused, never served."""


class UnknownKeyError(ValueError):
    """A value was encrypted with a key the deployment no longer holds."""


class KeyRing:
    """AES-EAX (LangGraph's format: nonce, tag, ciphertext) under several keys: the first
    encrypts, every one decrypts. Values name their key in the cipher name (`aes-<id>`); a
    single `THREADLINE_AES_KEY` keeps LangGraph's plain `aes`, and `aes` values written so are
    tried under each key (EAX's tag tells the right one).

    A value encrypted for a place (AEAD associated data, see `places`) is named
    `aesb-<fingerprint of its key>` (whatever the ring calls the key, so a failure is never
    a wrong guess of key) and decrypts only at that place. Unbound values (written before
    binding, or by a stock read/write path) still read anywhere; `threadline keys rotate`
    binds them."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], *, named: bool = True) -> None:
        if not keys:
            raise ValueError("a key ring needs a key")
        for key_id, key in keys:
            if len(key) not in AES_KEY_LENGTHS:
                raise ValueError(f"AES key {key_id!r} must be 16, 24 or 32 bytes long")
        self.keys = dict(keys)
        self.current_id = keys[0][0]
        self.current_unbound_name = f"aes-{self.current_id}" if named else "aes"
        self.by_fingerprint = {_fingerprint(key): key for _, key in keys}
        self.current_name = f"{BOUND_CIPHER}-{_fingerprint(keys[0][1])}"

    def encrypt(self, plaintext: bytes, place: Place | None = None) -> tuple[str, bytes]:
        from Crypto.Cipher import AES

        cipher = AES.new(self.keys[self.current_id], AES.MODE_EAX)
        if place is not None:
            cipher.update(place)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        name = self.current_name if place is not None else self.current_unbound_name
        return name, cipher.nonce + tag + ciphertext

    def decrypt(self, ciphername: str, ciphertext: bytes, place: Place | None = None) -> bytes:
        if ciphername.startswith(f"{BOUND_CIPHER}-"):
            return self._open_bound(ciphername, ciphertext, place)
        if ciphername == "aes":
            candidates = list(self.keys.values())
        elif ciphername.startswith("aes-") and ciphername[4:] in self.keys:
            candidates = [self.keys[ciphername[4:]]]
        else:
            raise _unknown(ciphername)
        for key in candidates:
            with contextlib.suppress(ValueError):
                return _open(key, ciphertext)
        raise UnknownKeyError("a stored value does not decrypt under any configured key")

    def _open_bound(self, ciphername: str, ciphertext: bytes, place: Place | None) -> bytes:
        key = self.by_fingerprint.get(ciphername[len(BOUND_CIPHER) + 1 :])
        if key is None:
            raise _unknown(ciphername)
        if place is None:
            raise MisplacedValueError("a value bound to its place was read without one")
        try:
            return _open(key, ciphertext, place)
        except ValueError:
            raise MisplacedValueError(
                "refusing a stored value that does not belong where it was found (copied from "
                "another thread, checkpoint or channel, or altered)"
            ) from None

    def is_current(self, ciphername: str) -> bool:
        return ciphername == self.current_name


# Cipher names of values bound to their place: `aesb-<key fingerprint>`.
BOUND_CIPHER = "aesb"


def _fingerprint(key: bytes) -> str:
    """Names a key in bound values without revealing it."""
    return hmac.new(key, b"threadline key fingerprint", hashlib.sha256).hexdigest()[:12]


def _unknown(ciphername: str) -> UnknownKeyError:
    return UnknownKeyError(
        f"a stored value is encrypted with {ciphername!r}, which the configured keys "
        "(THREADLINE_AES_KEY / THREADLINE_AES_KEYS) do not include"
    )


def _open(key: bytes, data: bytes, place: Place | None = None) -> bytes:
    from Crypto.Cipher import AES

    cipher = AES.new(key, AES.MODE_EAX, nonce=data[:16])
    if place is not None:
        cipher.update(place)
    return bytes(cipher.decrypt_and_verify(data[32:], data[16:32]))


def parse_keys(spec: str) -> list[tuple[str, bytes]]:
    """`id1:key1,id2:key2` (the first encrypts) → [(id, key bytes)]."""
    keys = []
    for entry in spec.split(","):
        key_id, sep, key = entry.strip().partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9_]{1,16}", key_id):
            raise ValueError("THREADLINE_AES_KEYS is `id:key,id:key` with ids of a-z 0-9 _")
        keys.append((key_id, key.encode()))
    if len({key_id for key_id, _ in keys}) != len(keys):
        raise ValueError("THREADLINE_AES_KEYS names an id twice")
    return keys


def make_serializer(aes_key: str | None, aes_keys: str | None = None) -> SerializerProtocol:
    """Plain JsonPlus, or AES-encrypted JsonPlus when a key (or a key ring) is configured."""
    if aes_keys:
        ring = KeyRing(parse_keys(aes_keys))
    elif aes_key:
        ring = KeyRing([("default", aes_key.encode())], named=False)
    else:
        return JsonPlusSerializer()
    first = ring.keys[ring.current_id]
    index_key = hmac.new(first, b"threadline metadata index", hashlib.sha256).digest()
    return StrictEncryptedSerializer(ring, JsonPlusSerializer(), index_key=index_key)


def is_encrypting(serde: SerializerProtocol) -> bool:
    return isinstance(serde, EncryptedSerializer)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class ValueSealer:
    """Turns JSONB-bound values into ciphertext envelopes when the serializer encrypts.

    Without encryption every method is the identity, so rows stay byte-compatible with the
    stock `AsyncPostgresSaver`.
    """

    def __init__(self, serde: SerializerProtocol) -> None:
        self.serde = serde
        self.encrypted = is_encrypting(serde)
        self._index_key: bytes | None = getattr(serde, "index_key", None)

    def seal(self, value: Any, place: Place | None = None) -> list[str]:
        """A JSON envelope of `value`, bound to `place` when one is given."""
        if place is None:
            type_tag, blob = self.serde.dumps_typed(value)
        else:
            type_tag, blob = dumps_at(self.serde, value, place)
        return [type_tag, base64.b64encode(blob).decode()]

    def unseal(self, envelope: Any, place: Place | None = None) -> Any:
        if not (isinstance(envelope, list) and len(envelope) == 2):
            raise UnencryptedDataError("malformed sealed value in a checkpoint row")
        data = (envelope[0], base64.b64decode(envelope[1]))
        return self.serde.loads_typed(data) if place is None else loads_at(self.serde, data, place)

    def _mac(self, key: str, value: Any) -> str:
        assert self._index_key is not None
        message = key.encode() + b"\0" + json.dumps(value, sort_keys=True).encode()
        return hmac.new(self._index_key, message, hashlib.sha256).hexdigest()[:32]

    def seal_metadata(self, metadata: Mapping[str, Any], place: Place) -> dict[str, Any]:
        if not self.encrypted:
            return dict(metadata)
        stored: dict[str, Any] = {SEALED: self.seal(dict(metadata), place)}
        if self._index_key is not None:
            stored[SEALED_INDEX] = {
                k: self._mac(k, v) for k, v in metadata.items() if _is_scalar(v)
            }
        stored.update({k: True for k in PRESENCE_KEYS if k in metadata})
        return stored

    def open_metadata(self, stored: Mapping[str, Any], place: Place) -> dict[str, Any]:
        if not self.encrypted:
            return dict(stored)
        if SEALED not in stored:
            raise UnencryptedDataError(
                "refusing to read unencrypted checkpoint metadata while THREADLINE_AES_KEY is set"
            )
        return dict(self.unseal(stored[SEALED], place))

    def split_filter(self, filter: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSONB containment the database can test, residual to check after decryption)."""
        if not self.encrypted:
            return dict(filter), {}
        if self._index_key is None:
            return {}, dict(filter)
        indexed = {k: self._mac(k, v) for k, v in filter.items() if _is_scalar(v)}
        residual = {k: v for k, v in filter.items() if not _is_scalar(v)}
        return ({SEALED_INDEX: indexed} if indexed else {}), residual

    def run_id_keys(self, run_ids: list[str]) -> list[str] | None:
        """What `metadata -> $idx ->> run_id` holds for these runs; None if not indexed."""
        if not self.encrypted:
            return list(run_ids)
        if self._index_key is None:
            return None
        return [self._mac("run_id", r) for r in run_ids]


def metadata_matches(metadata: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    """JSONB `@>` semantics for a decrypted metadata dict."""
    return all(k in metadata and _contains(metadata[k], v) for k, v in filter.items())


def _contains(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        return isinstance(value, Mapping) and metadata_matches(value, wanted)
    if isinstance(wanted, list):
        return isinstance(value, list) and all(any(_contains(v, w) for v in value) for w in wanted)
    return bool(value == wanted)
