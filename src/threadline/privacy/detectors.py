"""Finding sensitive values in text, offline.

Microsoft Presidio's pattern recognizers do the finding — email, phone numbers (Google's
`phonenumbers`), credit cards (Luhn-checked), IBANs (checksum-checked), IP addresses, US SSNs —
without its NLP models (which need a download): each recognizer runs on its own, with no spaCy
pipeline. Secrets pasted into a chat (OpenAI `sk-` keys, AWS access keys, GitHub and Slack
tokens, bearer tokens, private key blocks) and a deployment's own regexes are Presidio
`PatternRecognizer`s too, so every entity goes through the same engine and overlap rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# threadline's entity names → Presidio's.
PRESIDIO_ENTITIES = {
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "credit_card": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ip": "IP_ADDRESS",
    "us_ssn": "US_SSN",
    "secret": "SECRET",
}
BUILT_IN = tuple(PRESIDIO_ENTITIES)
SECRET_PATTERNS = {
    "openai key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
    "aws access key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "github token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "bearer token": r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
}
# Below this score a finding is not acted on (Presidio's phone matches score 0.4, and a
# credit-card number without its checksum would score lower).
MIN_SCORE = 0.4


@dataclass(frozen=True)
class Finding:
    entity: str  # threadline's name: `email`, `secret`, a custom name...
    start: int
    end: int
    score: float


class Detector:
    """The recognizers of the chosen entities, built once per process."""

    def __init__(self, entities: Iterable[str], custom: Mapping[str, str] | None = None) -> None:
        self.entities = tuple(entities)
        self.custom = dict(custom or {})
        if unknown := set(self.entities) - set(BUILT_IN):
            raise ValueError(f"unknown PII entities {sorted(unknown)}; known: {list(BUILT_IN)}")
        for name, pattern in self.custom.items():
            re.compile(pattern)  # a bad regex fails at start-up, with its name
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"custom PII entity names are lower_snake_case, not {name!r}")

    @cached_property
    def _recognizers(self) -> list[tuple[str, Any]]:
        from presidio_analyzer import Pattern, PatternRecognizer
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )

        def patterns(entity: str, named: Mapping[str, str]) -> Any:
            found = [Pattern(name, regex, 0.9) for name, regex in named.items()]
            return PatternRecognizer(supported_entity=entity, patterns=found)

        built = {
            "email": _offline_email_recognizer,
            "phone": PhoneRecognizer,
            "credit_card": CreditCardRecognizer,
            "iban": IbanRecognizer,
            "ip": IpRecognizer,
            "us_ssn": UsSsnRecognizer,
            "secret": lambda: patterns("SECRET", SECRET_PATTERNS),
        }
        chosen = [(name, built[name]()) for name in self.entities]
        chosen += [(n, patterns(n.upper(), {n: p})) for n, p in self.custom.items()]
        return chosen

    def find(self, text: str) -> list[Finding]:
        """The sensitive spans of `text`, not overlapping (the longer, then likelier, wins)."""
        found: list[Finding] = []
        for name, recognizer in self._recognizers:
            for result in recognizer.analyze(text, recognizer.supported_entities, None):
                if result.score >= MIN_SCORE:
                    found.append(Finding(name, result.start, result.end, result.score))
        found.sort(key=lambda f: (f.start, -(f.end - f.start), -f.score))
        kept: list[Finding] = []
        for finding in found:
            if kept and finding.start < kept[-1].end:
                continue
            kept.append(finding)
        return kept


def _offline_email_recognizer() -> Any:
    from presidio_analyzer.predefined_recognizers import EmailRecognizer
    from tldextract import TLDExtract

    suffixes = TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled list, no fetch

    class Offline(EmailRecognizer):
        """Presidio's email recognizer, checking domains against tldextract's bundled list
        instead of downloading the public suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return bool(suffixes(pattern_text).fqdn)

    return Offline()
