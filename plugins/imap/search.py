"""IMAP SEARCH evaluation (RFC 3501 / RFC 9051 section 6.4.4) over one message context.

Sans-I/O. ``key`` is any object with ``op`` (upper-case name) and ``args`` (a tuple), as
the wire module's ``SearchKey``; sequence sets are any object with ``contains(n, largest)``.
``ctx`` gives ``seq``, ``uid``, ``largest_seq``, ``largest_uid``, ``flags`` (frozenset of
flag names such as ``\\Seen``), ``recent``, ``internal_date`` (epoch seconds), ``size``,
``modseq`` and ``message()``, which builds the :class:`mime.Message` and is only called
when a key needs the content.

Dates: BEFORE/ON/SINCE compare the internal date's calendar date "disregarding time and
timezone". Only the epoch is stored, so that date is taken in UTC. SENTBEFORE/SENTON/
SENTSINCE use the Date header's date in the header's own zone; a message without a usable
Date header counts as sent on 1 January 1970 (as Dovecot does: "before" every date).
String matching is case-insensitive substring matching (Unicode case folding) over the
decoded header values and text parts; an empty HEADER value means "the field exists".
MODSEQ takes its last argument as the number (entry name and type are ignored).
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["matches", "evaluate"]

# cost classes: flags and numbers first, then headers, then bodies
_CHEAP = {"ALL", "SEQ", "UID", "FLAG", "NOFLAG", "RECENT", "NEW", "OLD", "BEFORE", "ON",
          "SINCE", "LARGER", "SMALLER", "MODSEQ",
          "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
          "UNDRAFT", "UNFLAGGED", "UNSEEN", "KEYWORD", "UNKEYWORD"}
_HEADER_KEYS = {"SENTBEFORE", "SENTON", "SENTSINCE", "HEADER", "FROM", "TO", "CC", "BCC",
                "SUBJECT"}
_SYSTEM_FLAGS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
                 "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}


_NO_DATE = _dt.date(1970, 1, 1)


def _cost(key) -> int:
    op = key.op.upper()
    if op in _CHEAP:
        return 0
    if op in _HEADER_KEYS:
        return 1
    if op in ("AND", "OR", "NOT"):
        return max((_cost(k) for k in key.args), default=0)
    return 2


def _internal_date(ctx) -> _dt.date:
    return _dt.datetime.fromtimestamp(ctx.internal_date, _dt.timezone.utc).date()


def _has_flag(ctx, flag: str) -> bool:
    f = flag.lower()
    return any(x.lower() == f for x in ctx.flags)


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _date_cmp(op: str, d: _dt.date | None, ref: _dt.date) -> bool:
    if d is None:
        return False
    if op.endswith("BEFORE"):
        return d < ref
    if op.endswith("ON"):
        return d == ref
    return d >= ref  # SINCE: "within or later than"


def matches(key, ctx) -> bool:
    op = key.op.upper()
    a = key.args
    if op == "ALL":
        return True
    if op == "AND":
        return all(matches(k, ctx) for k in sorted(a, key=_cost))
    if op == "OR":
        x, y = sorted(a, key=_cost)
        return matches(x, ctx) or matches(y, ctx)
    if op == "NOT":
        return not matches(a[0], ctx)
    if op == "SEQ":
        return a[0].contains(ctx.seq, ctx.largest_seq)
    if op == "UID":
        return a[0].contains(ctx.uid, ctx.largest_uid)
    if op in ("FLAG", "KEYWORD"):
        return _has_flag(ctx, a[0])
    if op in ("NOFLAG", "UNKEYWORD"):
        return not _has_flag(ctx, a[0])
    if op in _SYSTEM_FLAGS:
        return _has_flag(ctx, _SYSTEM_FLAGS[op])
    if op.startswith("UN") and op[2:] in _SYSTEM_FLAGS:
        return not _has_flag(ctx, _SYSTEM_FLAGS[op[2:]])
    if op == "RECENT":
        return bool(ctx.recent)
    if op == "NEW":
        return bool(ctx.recent) and not _has_flag(ctx, "\\Seen")
    if op == "OLD":
        return not ctx.recent
    if op in ("BEFORE", "ON", "SINCE"):
        return _date_cmp(op, _internal_date(ctx), a[0])
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _date_cmp(op, ctx.message().sent_date() or _NO_DATE, a[0])
    if op == "LARGER":
        return ctx.size > int(a[0])
    if op == "SMALLER":
        return ctx.size < int(a[0])
    if op == "MODSEQ":
        return ctx.modseq >= int(a[-1])
    if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return _header_match(ctx, op, a[0])
    if op == "HEADER":
        return _header_match(ctx, a[0], a[1])
    if op == "BODY":
        return ctx.message().body_contains(a[0])
    if op == "TEXT":
        return ctx.message().text_contains(a[0])
    raise ValueError(f"unknown search key {op}")


def _header_match(ctx, field: str, value: str) -> bool:
    values = ctx.message().header_values(field)
    if not value:
        return bool(values)  # an empty string: the field exists
    return any(_contains(v, value) for v in values)


def evaluate(key, contexts) -> list[int]:
    """Sequence numbers (``ctx.seq``) of the contexts that match, in order."""
    return [c.seq for c in contexts if matches(key, c)]
