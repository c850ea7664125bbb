"""Secrets out of sight: the values of an app's secrets, masked in every text Hyperdrive shows.

A secret is any value from `$DATA/includes/*.env`, the value of an exported key whose name
looks secret (`*PASS*`, `*SECRET*`, `*TOKEN*`, `*KEY*`, `*PRIVATE*`, `*CREDENTIAL*`), and the
value of a key the orders list with `secret NAME`. Each is masked as written and in the forms
an app commonly prints it: URL-encoded and JSON-escaped. Values shorter than MIN_LENGTH are
left alone: masking `1` or `true` would destroy every log and hide nothing worth hiding.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import ahocorasick

MASK = "********"
MIN_LENGTH = 6
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
# fields Hyperdrive itself makes (names, ids, times): never masked, so filters keep working
IDENTITY_FIELDS = frozenset({"ts", "seq", "event", "app", "sha", "ship", "deploy", "ms"})


def looks_secret(name: str) -> bool:
    """Whether an env key's name says its value is a secret (`DB_PASSWORD`, `api_key`…)."""
    return SECRET_NAME.search(name) is not None


def secret_values(
    env: Mapping[str, str], includes: Mapping[str, str], named: Iterable[str] = ()
) -> set[str]:
    """The values to mask for one app: every include, and each key of its env that looks
    secret or that its orders name with `secret`."""
    named = set(named)
    ordered = {v for k, v in env.items() if k in named or looks_secret(k)}
    return {v for v in (*includes.values(), *ordered) if len(v) >= MIN_LENGTH}


def shown_forms(value: str) -> set[str]:
    """The ways a program prints a value: as is, URL-encoded, JSON-escaped."""
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}


@dataclass(frozen=True)
class Masker:
    """Replaces every secret in a text by MASK; built once per change of the secrets.

    An Aho-Corasick automaton (pyahocorasick) finds every form of every secret in one pass,
    overlapping ones included; overlapping finds are masked as one span, so no part of either
    shows, and a secret inside a longer one goes with it."""

    automaton: Any = None  # ahocorasick.Automaton: each form, found with its length

    @classmethod
    def of(cls, values: Iterable[str]) -> Masker:
        """A masker of `values` (those shorter than MIN_LENGTH are ignored)."""
        forms = {f for v in values if len(v) >= MIN_LENGTH for f in shown_forms(v)}
        if not forms:
            return cls()
        automaton = ahocorasick.Automaton()
        for form in forms:
            automaton.add_word(form, len(form))
        automaton.make_automaton()
        return cls(automaton)

    def __call__(self, text: str) -> str:
        if self.automaton is None:
            return text
        found = sorted((end + 1 - length, end + 1) for end, length in self.automaton.iter(text))
        if not found:
            return text
        kept, at = [], 0
        for start, end in found:
            if start > at:
                kept.append(text[at:start])
            if end > at:
                if start >= at:
                    kept.append(MASK)
                at = end
        return "".join([*kept, text[at:]])

    def __bool__(self) -> bool:
        return self.automaton is not None


def mask_in(value: Any, mask: Callable[[str], str]) -> Any:
    """`mask` over every string inside a JSON-like value."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list | tuple):
        return [mask_in(v, mask) for v in value]
    if isinstance(value, dict):
        return {k: mask_in(v, mask) for k, v in value.items()}
    return value


def mask_event(event: Mapping[str, Any], mask: Callable[[str], str]) -> dict[str, Any]:
    """An event with every field masked but the identity fields Hyperdrive itself makes."""
    return {k: v if k in IDENTITY_FIELDS else mask_in(v, mask) for k, v in event.items()}


class LogMask(logging.Filter):
    """The daemon's own log (stderr, the journal) masked as the events are: a handler filter,
    so every logger's records pass through it, tracebacks included."""

    def __init__(self, mask: Callable[[str], str]) -> None:
        super().__init__()
        self.mask = mask

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True
