"""Confidence of the parts of an answer, from the engine's token log-probabilities.

vLLM applies the grammar's mask to the logits before it computes log-probabilities, so each
generated token's log-probability is under the constraint: the alternatives the grammar
forbids have none of the mass. A part of an answer (an entity, an answer span, a label) is
written by the tokens whose characters overlap the part's characters in the answer text (a
token such as `"],["` that closes one part and opens the next belongs to both); tokens forced
by the grammar have probability 1. Its confidence is those tokens' joint probability given what
came before, `exp(sum of log-probabilities)`, or their geometric mean, `exp(mean)`: each task
type uses the one whose confidences match its accuracy better (measured, docs/benchmarks.md).

Either is the model's own probability for one tokenization of those characters: other
tokenizations of the same characters, which a model trained on canonical tokens rarely
takes, are not added in.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol


class IdTokenizer(Protocol):
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def decode(self, ids: list[int], **kwargs: Any) -> str: ...

    @property
    def all_special_ids(self) -> list[int]: ...


@cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's scheme, Qwen's too), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer: IdTokenizer, token_ids: Sequence[int]) -> list[bytes]:
    """The bytes each token adds to the decoded text (none for special tokens such as the end)."""
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    pieces: list[bytes] = []
    for token_id, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids)), strict=True):
        if token_id in special:
            pieces.append(b"")
        elif all(ch in decoder for ch in token):
            pieces.append(bytes(decoder[ch] for ch in token))
        else:  # not a byte-level token (an added token): its text is its bytes
            pieces.append(tokenizer.decode([token_id]).encode())
    return pieces


@dataclass(frozen=True)
class TokenConfidences:
    """Where each generated token starts in the answer text (characters), and its log-probability."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    logprobs: tuple[float, ...]

    @classmethod
    def build(
        cls, tokenizer: IdTokenizer, text: str, token_ids: Sequence[int], logprobs: Sequence[float] | None
    ) -> TokenConfidences | None:
        """None when there are no log-probabilities, or the tokens do not spell out the text
        (a tokenizer this code cannot read byte by byte): no confidence rather than a wrong one."""
        if logprobs is None or len(logprobs) != len(token_ids):
            return None
        try:
            pieces = token_bytes(tokenizer, token_ids)
        except (KeyError, IndexError, TypeError, ValueError):  # ids this tokenizer does not have
            return None
        encoded = text.encode()
        if b"".join(pieces) != encoded:
            return None
        # The character at each byte offset: a token that ends inside a character spans it.
        char_starts = [0]
        for ch in text:
            char_starts.append(char_starts[-1] + len(ch.encode()))
        starts, ends, offset = [], [], 0
        for piece in pieces:
            starts.append(bisect.bisect_right(char_starts, offset) - 1)
            offset += len(piece)
            ends.append(bisect.bisect_left(char_starts, offset))
        return cls(tuple(starts), tuple(ends), tuple(logprobs))

    def of(self, start: int, end: int, *, per_token: bool = False) -> float:
        """The probability of the tokens overlapping characters [start, end) of the answer: their
        joint probability, or with `per_token` its geometric mean (exp of the mean log-probability)."""
        logprobs = [lp for s, e, lp in zip(self.starts, self.ends, self.logprobs, strict=True) if s < end and start < e]
        if not logprobs:
            return 1.0
        return math.exp(sum(logprobs) / (len(logprobs) if per_token else 1))


@dataclass
class Node:
    """A JSON value's place in the answer text, [start, end), and its children's."""

    start: int
    end: int
    items: list[Node] = field(default_factory=list)  # array elements
    members: dict[str, Node] = field(default_factory=dict)  # object values by key
    key_start: int | None = None  # an object member's: where its key starts


def locate(text: str) -> Node:
    """Parse compact JSON (what the grammar admits), recording every value's character range."""
    node, end = _value(text, _skip(text, 0))
    if _skip(text, end) != len(text):
        raise ValueError("trailing characters after the JSON value")
    return node


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    i += 1  # the opening quote
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _value(text: str, i: int) -> tuple[Node, int]:
    ch = text[i]
    if ch == "{":
        node, i = Node(i, i), _skip(text, i + 1)
        while text[i] != "}":
            key_start, key_end = i, _string_end(text, i)
            key = text[i + 1 : key_end - 1]
            i = _skip(text, key_end)
            if text[i] != ":":
                raise ValueError(f"expected ':' at {i}")
            child, i = _value(text, _skip(text, i + 1))
            child.key_start = key_start
            node.members[key] = child
            i = _skip(text, i)
            if text[i] == ",":
                i = _skip(text, i + 1)
        node.end = i + 1
        return node, i + 1
    if ch == "[":
        node, i = Node(i, i), _skip(text, i + 1)
        while text[i] != "]":
            child, i = _value(text, i)
            node.items.append(child)
            i = _skip(text, i)
            if text[i] == ",":
                i = _skip(text, i + 1)
        node.end = i + 1
        return node, i + 1
    if ch == '"':
        end = _string_end(text, i)
        return Node(i, end), end
    end = i
    while end < len(text) and text[end] not in ",]} \t\r\n":
        end += 1
    if end == i:
        raise ValueError(f"unexpected {ch!r} at {i}")
    return Node(i, end), end
