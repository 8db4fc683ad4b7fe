"""Serializers for every tier: one choice, so encryption at rest covers all of them."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

AES_KEY_LENGTHS = (16, 24, 32)


class UnencryptedDataError(ValueError):
    """Stored data was written without encryption although a key is configured."""


class StrictEncryptedSerializer(EncryptedSerializer):
    """AES (EAX) like LangGraph's own, but refuses plaintext rows instead of reading them."""

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_tag = data[0]
        if "+" not in type_tag and type_tag not in ("null", "empty"):
            raise UnencryptedDataError(
                "refusing to read an unencrypted checkpoint value while THREADLINE_AES_KEY is set"
            )
        return super().loads_typed(data)


def make_serializer(aes_key: str | None) -> SerializerProtocol:
    """Plain JsonPlus, or AES-encrypted JsonPlus when a key is configured."""
    if not aes_key:
        return JsonPlusSerializer()
    key = aes_key.encode()
    if len(key) not in AES_KEY_LENGTHS:
        raise ValueError("THREADLINE_AES_KEY must be 16, 24 or 32 bytes long")
    encrypted = EncryptedSerializer.from_pycryptodome_aes(key=key)
    return StrictEncryptedSerializer(encrypted.cipher, encrypted.serde)
