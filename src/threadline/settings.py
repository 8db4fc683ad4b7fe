"""Runtime settings, read from `THREADLINE_*` environment variables (and `.env`).

There is no global settings object: callers build `Settings()` at the edge (CLI, app factory,
`langgraph.json` entry points) and pass it down, so tests never swap global state.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from threadline.durations import parse_duration
from threadline.rules import MIN_CONTEXT_TOKENS, Strategy, summary_ratios_problem

CheckpointerKind = Literal[
    "memory", "sqlite", "postgres", "redis", "tiered", "dynamodb", "firestore"
]
TtlStrategy = Literal["delete", "keep_latest", "archive"]
PiiStrategy = Literal["off", "redact", "mask", "hash", "block"]
PII_ENTITIES = "email,phone,credit_card,iban,ip,us_ssn,secret"

FAKE_MODEL = "fake"


class SettingsError(ValueError):
    """A setting that cannot work; the message is one line meant for the operator."""


class Settings(BaseSettings):
    """Everything an operator can configure. Defaults run fully offline on SQLite."""

    model_config = SettingsConfigDict(
        env_prefix="THREADLINE_", env_file=".env", extra="ignore", frozen=True
    )

    # Model
    model: str = Field(
        default="openai:gpt-4o-mini",
        description="`openai:<model>` for any OpenAI-compatible endpoint, or `fake` (offline).",
    )
    system_prompt: str = "You are a helpful assistant. Be concise."
    model_timeout_seconds: float = Field(default=60.0, gt=0)

    # Context budget
    max_context_tokens: int = Field(default=8000, ge=MIN_CONTEXT_TOKENS)
    memory_strategy: Strategy = "summarize"
    summary_trigger_ratio: float = Field(default=0.9, gt=0, le=1)
    summary_target_ratio: float = Field(default=0.5, gt=0, lt=1)
    summary_max_tokens: int = Field(default=1024, ge=64)
    summary_timeout_seconds: float = Field(default=30.0, gt=0)
    token_counter: Literal["auto", "tiktoken", "approximate"] = "auto"

    # Persistence
    checkpointer: CheckpointerKind = "sqlite"
    sqlite_path: Path = Path(".threadline/threads.sqlite")
    postgres_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    postgres_pool_size: int = Field(default=10, ge=1)
    # Decoded transcripts each process keeps, so a turn decodes only what it added.
    history_cache_mb: int = Field(default=32, ge=1)
    # How long an operation waits for a pooled Postgres connection before it is a 503.
    postgres_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    redis_ttl_minutes: float | None = Field(
        default=None, gt=0, description="Idle TTL for the stock Redis saver's keys."
    )
    hot_ttl_seconds: int = Field(default=3600, ge=1)
    # `auto`: ask Redis at start-up whether it is a cluster; `true`/`false` decide.
    redis_cluster: Literal["auto", "true", "false"] = "auto"
    # Redis connections per process (per node on a cluster); a call past them waits.
    redis_pool_size: int = Field(default=256, ge=1)
    redis_timeout_seconds: float = Field(default=0.1, gt=0)
    # DynamoDB: one table (created if missing); region and credentials from the standard AWS
    # variables; the endpoint only for DynamoDB Local or a VPC endpoint.
    dynamodb_table: str = "threadline"
    dynamodb_endpoint_url: str | None = None
    # Firestore: the project (unset: Google's default credentials say) and a prefix for the
    # collections; the emulator through the standard FIRESTORE_EMULATOR_HOST.
    firestore_project: str | None = None
    firestore_collection: str = "threadline"
    aes_key: SecretStr | None = None
    # Several keys with ids, `new:KEY2,old:KEY1`: the first encrypts, all decrypt
    # (`threadline keys rotate` re-encrypts everything under the first). Instead of aes_key.
    aes_keys: SecretStr | None = None

    # Operations: log level and format (text, or one JSON object per line), and whether
    # /metrics is served without an API key when keys are set.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    metrics_public: bool = False
    # OpenTelemetry traces, exported as the standard OTEL_EXPORTER_OTLP_* variables say.
    otel: bool = False

    # Server
    api_keys: SecretStr | None = Field(
        default=None, description="`key1:tenant1,key2:tenant2`; unset = single tenant."
    )
    # Slow or idle clients: a request head must arrive within this of the connection (or of
    # the previous response); a body within this of its request; an idle keep-alive closes.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    # With API keys set, /docs, /redoc and /openapi.json need a key too unless published.
    publish_docs: bool = False
    turn_lock_timeout_seconds: float = Field(default=10.0, ge=0)
    # One JSON line per erasure, ids as keyed hashes (the key: this, else derived from the AES
    # key, else a random one kept beside the log).
    audit_log_path: Path = Path(".threadline/audit.jsonl")
    audit_key: SecretStr | None = None
    # With encryption on, thread ids and tenants are stored as keyed hashes under this key
    # (default: derived from a single THREADLINE_AES_KEY; required with THREADLINE_AES_KEYS,
    # since it must not change when the AES key rotates).
    id_key: SecretStr | None = None
    # How long a retried turn (same Idempotency-Key or message id) gets its first result.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    max_message_chars: int = Field(default=32_000, ge=1)

    # Retention: a thread idle for `thread_ttl` (`90s`, `12h`, `30d`; unset: kept forever) is
    # deleted, cut to its latest checkpoint, or archived to `archive_url` (`file:///path` or
    # `s3://bucket/prefix`); the sweeper runs every `sweep_interval` inside the server.
    thread_ttl: str | None = None
    ttl_strategy: TtlStrategy = "delete"
    archive_url: str | None = None
    sweep_interval: str = "5m"
    sweep_limit: int = Field(default=1000, ge=1)
    restore_on_turn: bool = False

    # Sensitive data found in a turn (`pii_entities`, plus `pii_custom` regexes by name) is
    # replaced before anything is stored, or the turn is refused (`block`); the model sees the
    # original in that turn unless `pii_model_sees=redacted`. `hash` needs `pii_key` or the
    # AES key (equal values hash equal across replicas).
    pii_strategy: PiiStrategy = "off"
    pii_entities: str = PII_ENTITIES
    pii_custom: dict[str, str] = Field(default_factory=dict)
    pii_model_sees: Literal["original", "redacted"] = "original"
    pii_key: SecretStr | None = None
    max_messages_per_request: int = Field(default=50, ge=1)

    @field_validator("model")
    @classmethod
    def _model_is_known(cls, value: str) -> str:
        if value == FAKE_MODEL or (value.startswith("openai:") and len(value) > len("openai:")):
            return value
        raise ValueError("must be `fake` or `openai:<model-name>`")

    @field_validator("thread_ttl", "sweep_interval")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("archive_url")
    @classmethod
    def _archive_is_known(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file:///", "s3://")):
            raise ValueError("must be file:///path or s3://bucket/prefix")
        return value

    @property
    def thread_ttl_seconds(self) -> float | None:
        return parse_duration(self.thread_ttl) if self.thread_ttl else None

    @property
    def encryption_secret(self) -> str | None:
        """The key that encrypts (the first of the ring), to derive other keys from."""
        if self.aes_keys is not None:
            first = self.aes_keys.get_secret_value().split(",")[0]
            return first.partition(":")[2]
        return self.aes_key.get_secret_value() if self.aes_key is not None else None

    @property
    def pii_entity_names(self) -> list[str]:
        return [name.strip() for name in self.pii_entities.split(",") if name.strip()]

    @property
    def sweep_interval_seconds(self) -> float:
        return parse_duration(self.sweep_interval)

    @classmethod
    def from_env(cls) -> Settings:
        """`Settings()`, with a malformed variable reported as one `SettingsError` line."""
        try:
            return cls()
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise SettingsError(f"THREADLINE_{field.upper()}: {first['msg']}") from None

    @property
    def model_name(self) -> str:
        """The provider's model name (`gpt-4o-mini`), or `fake`."""
        return self.model.removeprefix("openai:")

    def check_store(self) -> None:
        """The URLs the chosen checkpointer needs are set."""
        needs = {
            "postgres": ["postgres_url"],
            "redis": ["redis_url"],
            "tiered": ["postgres_url", "redis_url"],
        }.get(self.checkpointer, [])
        if missing := [f"THREADLINE_{f.upper()}" for f in needs if getattr(self, f) is None]:
            raise SettingsError(
                f"THREADLINE_CHECKPOINTER={self.checkpointer} needs {' and '.join(missing)}"
            )

    def check(self, *, model: bool = True) -> Settings:
        """Fail fast, with one line, on settings that cannot work at start-up (the model's
        too unless `model=False`: reading stored threads needs no model)."""
        if model and self.model != FAKE_MODEL and not os.environ.get("OPENAI_API_KEY"):
            raise SettingsError(
                f"THREADLINE_MODEL={self.model} needs OPENAI_API_KEY "
                "(or set THREADLINE_MODEL=fake for the offline model)"
            )
        self.check_store()
        from threadline.checkpointers.serde import AES_KEY_LENGTHS, KeyRing, parse_keys

        if self.aes_key is not None and (
            len(self.aes_key.get_secret_value().encode()) not in AES_KEY_LENGTHS
        ):
            raise SettingsError("THREADLINE_AES_KEY must be 16, 24 or 32 bytes long")
        if self.aes_keys is not None:
            if self.aes_key is not None:
                raise SettingsError(
                    "set THREADLINE_AES_KEYS or THREADLINE_AES_KEY, not both (put the old key "
                    "in the ring: THREADLINE_AES_KEYS=new:KEY2,old:KEY1)"
                )
            try:
                KeyRing(parse_keys(self.aes_keys.get_secret_value()))
            except ValueError as exc:
                raise SettingsError(f"THREADLINE_AES_KEYS: {exc}") from None
            if self.id_key is None:
                raise SettingsError(
                    "THREADLINE_AES_KEYS needs THREADLINE_ID_KEY: thread ids are stored as keyed "
                    "hashes, which must not change with the AES key (`threadline keys id-key` "
                    "prints the one a single THREADLINE_AES_KEY implies)"
                )
        if self.ttl_strategy == "archive" and self.archive_url is None:
            raise SettingsError("THREADLINE_TTL_STRATEGY=archive needs THREADLINE_ARCHIVE_URL")
        if self.ttl_strategy == "keep_latest" and self.checkpointer == "redis":
            raise SettingsError(
                "THREADLINE_TTL_STRATEGY=keep_latest is not available on "
                "THREADLINE_CHECKPOINTER=redis (use delete or archive, or tiered/postgres)"
            )
        if self.pii_strategy == "hash" and self.pii_key is None and self.encryption_secret is None:
            raise SettingsError(
                "THREADLINE_PII_STRATEGY=hash needs THREADLINE_PII_KEY or THREADLINE_AES_KEY"
            )
        if self.pii_strategy != "off":
            from threadline.privacy import Detector

            try:
                Detector(self.pii_entity_names, self.pii_custom)
            except (ValueError, re.error) as exc:
                raise SettingsError(f"THREADLINE_PII_ENTITIES/PII_CUSTOM: {exc}") from None
        if problem := summary_ratios_problem(self.summary_target_ratio, self.summary_trigger_ratio):
            raise SettingsError(f"THREADLINE_SUMMARY_TARGET_RATIO/TRIGGER_RATIO: {problem}")
        return self
