"""Compile a bounded task schema into an llguidance Lark grammar for one request.

The grammar admits exactly compact JSON (no whitespace) that validates against the schema,
with properties in declared order. Grounded string fields become a substring lexeme over
the request's source text, so the model can only write runs of whole source pieces: spans
are verbatim by construction, and the gateway still verifies them after decoding.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from app.tasks.ranges import date_regex, number_regex
from app.tasks.schema import DECIMALS, DEFAULT_YEARS, GROUNDED, YEARS, flag_tail

# Pieces are words, whitespace runs or single other characters, each with the combining marks
# that follow it: a span can start or end at any word boundary but never inside a word, inside
# a JSON escape or between a letter and its accent. Runs are capped (words at 32 characters,
# whitespace at 8, i.e. at most 48 escaped characters) so that some span always fits a
# grounded field's maxLength: otherwise a text made of one very long "word" leaves the
# grammar no way forward and decoding stops mid-string.
PIECE_MAX_CHARS = 32
_WHITESPACE_MAX_CHARS = 8
# The planes that can hold combining marks: 3 to 13 are ideographs or unassigned, 15 and 16
# private use (tests/test_grammar.py checks every code point). A quarter of the scan.
_MARK_PLANES = (range(0x30000), range(0xE0000, 0xF0000))


def _mark_ranges() -> str:
    """The combining marks (Unicode categories Mn, Mc, Me) as regex class ranges. `re` has no
    \\p{M}, and its `\\w` leaves marks out: in NFD text "città" is "citta" + U+0300."""
    category = unicodedata.category
    ranges: list[list[int]] = []
    for code in itertools.chain(*_MARK_PLANES):
        if category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


def _piece_pattern() -> re.Pattern[str]:
    marks, more = _mark_ranges(), PIECE_MAX_CHARS - 1
    # A character keeps the combining marks that follow it, so that no span ends between a
    # letter and its accent; a piece still holds at most PIECE_MAX_CHARS characters (none
    # escaped in JSON but a first control character: at most 37 escaped ones). Only a
    # character with more marks than that, or marks after whitespace, are cut between marks.
    return re.compile(
        rf"\w[\w{marks}]{{0,{more}}}(?![{marks}])"  # a word (or a slice of a long one), its marks
        rf"|[^\w\s{marks}][{marks}]{{0,{more}}}(?![{marks}])"  # any other character, its marks
        rf"|\s{{1,{_WHITESPACE_MAX_CHARS}}}"
        rf"|\S[{marks}]{{0,{more}}}"  # a character with too many marks for one piece, stray marks
    )


# Built once, at import (a scan of the code points, about 0.05 s): built on first use, it
# would cost the first request that grounds anything.
_PIECE = _piece_pattern()

# One JSON string unit: an unescaped character or an escape sequence. (`\/` is left out:
# a bare `/` would end the Lark regex literal, and JSON never needs that escape.)
_JSON_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\bfnrt]|\\u[0-9a-fA-F]{4})'


def source_pieces(text: str) -> list[str]:
    """Split text into the pieces a grounded span is made of (concatenation == text)."""
    pieces: list[str] = _PIECE.findall(text)
    return pieces


def json_escape(piece: str) -> str:
    return json.dumps(piece, ensure_ascii=False)[1:-1]


def lark_literal(text: str) -> str:
    """A Lark string literal matching `text` exactly."""
    return json.dumps(text, ensure_ascii=False)


@dataclass
class _Compiler:
    source_pieces: list[str]
    rules: list[str] = field(default_factory=list)
    counter: int = 0
    span_terminals: dict[tuple[int, int], str] = field(default_factory=dict)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def value(self, node: dict[str, Any]) -> str:
        """Return a Lark expression for one schema node, adding rules as needed."""
        if "anyOf" in node:
            name = self.fresh("alt")
            self.rules.append(f"{name}: " + " | ".join(self.value(s) for s in node["anyOf"]))
            return name
        if "enum" in node or "const" in node:
            values = node.get("enum", [node.get("const")])
            return "(" + " | ".join(lark_literal(json.dumps(v, ensure_ascii=False)) for v in values) + ")"
        kind = node["type"]
        if kind == "object":
            return self.object(node)
        if kind == "array":
            return self.tuple_array(node) if "prefixItems" in node else self.list_array(node)
        if kind == "string" and node.get("format") == "date":
            first, last = node.get(YEARS, DEFAULT_YEARS)
            return f'"\\"" {self.terminal("DATE", date_regex(first, last))} "\\""'
        if kind in ("integer", "number"):
            decimals = int(node.get(DECIMALS, 0)) if kind == "number" else 0
            return self.terminal("NUM", number_regex(node["minimum"], node["maximum"], decimals))
        if kind == "string":
            lo, hi = max(node.get("minLength", 0), 0), node["maxLength"]
            if node.get(GROUNDED):
                return f'"\\"" {self.span_terminal(max(lo, 1), hi)} "\\""'
            term = self.fresh("STR").upper()
            self.rules.append(f"{term}: /{_JSON_CHAR}{{{lo},{hi}}}/")
            return f'"\\"" {term} "\\""'
        if kind == "boolean":
            return '("true" | "false")'
        if kind == "null":
            return '"null"'
        raise ValueError(f"unsupported schema type {kind!r}")

    def list_array(self, node: dict[str, Any]) -> str:
        lo, hi = node.get("minItems", 0), node["maxItems"]
        if hi == 0:
            return lark_literal("[]")
        item = self.value(node["items"])
        # llguidance rejects an empty repetition range such as {0,0}.
        tail = f' ("," {item}){{{max(lo - 1, 0)},{hi - 1}}}' if hi > 1 else ""
        body = f"{item}{tail}"
        inner = body if lo > 0 else f"({body})?"
        name = self.fresh("arr")
        self.rules.append(f'{name}: "[" {inner} "]"')
        return name

    def tuple_array(self, node: dict[str, Any]) -> str:
        """Every prefix item in order, then up to maxItems - len(prefix) extra items: for an
        enum tail (flags), each value at most once and in declared order."""
        prefix = node["prefixItems"]
        parts = [self.value(prefix[0])]
        for sub in prefix[1:]:
            parts += ['","', self.value(sub)]
        room = node["maxItems"] - len(prefix)
        flags = flag_tail(node)
        if room > 0 and flags is not None:
            if room < len(flags):
                raise ValueError("a flag tail must admit every flag (maxItems >= prefix + flags)")
            literals = [lark_literal("," + json.dumps(v, ensure_ascii=False)) for v in flags]
            parts.append(
                self.ordered_subset(
                    literals, [False] * len(literals), at_least_one=node.get("minItems", 0) > len(prefix)
                )
            )
        elif room > 0 and isinstance(node.get("items"), dict):
            parts.append(f'("," {self.value(node["items"])}){{0,{room}}}')
        name = self.fresh("tup")
        self.rules.append(f'{name}: "[" {" ".join(parts)} "]"')
        return name

    def object(self, node: dict[str, Any]) -> str:
        """Properties in declared order; those not `required` may be left out (a form's items
        the note does not state), each written at most once."""
        required = set(node.get("required", []))
        members: list[str] = []
        for key, sub in node["properties"].items():
            name = self.fresh("mem")
            self.rules.append(f"{name}: {lark_literal(json.dumps(key, ensure_ascii=False) + ':')} {self.value(sub)}")
            members.append(name)
        needed = [key in required for key in node["properties"]]
        name = self.fresh("obj")
        if all(needed):
            body = ' "," '.join(members)
            self.rules.append(f'{name}: "{{" {body} "}}"')
        else:
            self.rules.append(f'{name}: "{{" {self.ordered_subset(members, needed, separated=True)} "}}"')
        return name

    def ordered_subset(
        self, items: list[str], needed: list[bool], *, separated: bool = False, at_least_one: bool = False
    ) -> str:
        """The items in order, each once, the `needed` ones always: with `separated`, joined by
        commas (the first written has none); otherwise each item carries its own separator.
        Linear in size: rest_i is "what may follow once something was written, from item i on"."""
        sep = '"," ' if separated else ""
        rest: list[str] = [""] * (len(items) + 1)
        for i in range(len(items) - 1, -1, -1):
            piece = f"{sep}{items[i]}" if needed[i] else f"({sep}{items[i]})?"
            if rest[i + 1]:
                piece += f" {rest[i + 1]}"
            rule = self.fresh("rest")
            self.rules.append(f"{rule}: {piece}")
            rest[i] = rule
        # The first item written: any item before (or at) the first needed one.
        starts = []
        for i, item in enumerate(items):
            starts.append(f"{item} {rest[i + 1]}".strip())
            if needed[i]:
                break
        name = self.fresh("sub")
        optional = not any(needed) and not at_least_one
        self.rules.append(f"{name}: " + " | ".join(starts))
        return f"{name}?" if optional else name

    def terminal(self, prefix: str, regex: str) -> str:
        name = self.fresh(prefix).upper()
        self.rules.append(f"{name}: /{regex}/")
        return name

    def span_terminal(self, lo: int, hi: int) -> str:
        key = (lo, hi)
        if key not in self.span_terminals:
            name = f"SPAN{len(self.span_terminals)}"
            chunks = json.dumps(
                {"substring_chunks": [json_escape(p) for p in self.source_pieces]},
                ensure_ascii=False,
            )
            # The intersection bounds the span's escaped length (so its raw length too)
            # and excludes the empty span.
            self.rules.append(f"{name}: %regex {chunks} & /(?s:.{{{lo},{hi}}})/")
            self.span_terminals[key] = name
        return self.span_terminals[key]


def compile_grammar(schema: dict[str, Any], source: str) -> str:
    """Lark grammar admitting compact JSON for `schema`, grounded spans drawn from `source`."""
    compiler = _Compiler(source_pieces=source_pieces(source))
    top = compiler.value(schema)
    return "\n".join([f"start: {top}", *compiler.rules]) + "\n"
