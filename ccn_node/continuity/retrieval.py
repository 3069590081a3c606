"""Relevant-history retrieval and full-text search over one user's conversations.

Why this shape: FTS5 gives cheap BM25 candidates; everything that needs more than one
row at a time (a turn's session, its neighbours, recency) is re-ranked here in Python over a
capped candidate set, so the cost stays bounded however large the corpus grows.

Safety: user text never reaches FTS5 syntax. It is split by the index's own tokenizer
(``porter unicode61``, through apsw), stop-words are dropped, and each surviving token is
quoted as an FTS5 string with ``"`` doubled, joined by ``OR``. Operators, ``*``, ``NEAR(``,
column filters, parentheses and NUL bytes are therefore plain text. Privacy: the user filter
is a condition of every SQL statement here, never a filter applied afterwards; FTS queries
also carry it inside the MATCH (the index's ``owner`` column) so other users' rows are
skipped by FTS5 itself, which is what keeps a query cheap at a million messages.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable
from typing import Any

import apsw
import msgspec

__all__ = [
    "QueryTerm",
    "RankParams",
    "SearchHit",
    "Turn",
    "doc_frequencies",
    "fts_query",
    "owned_match",
    "owner_token",
    "query_terms",
    "relevant_turns",
    "search",
]

_STOP_TEXT = """a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does doesn't
    doing don't down during each else ever few for from further get got had hadn't has hasn't have
    haven't having he he'd he'll he's her here here's hers herself him himself his how how's i i'd
    i'll i'm i've if in into is isn't it it's its itself just let's like me might more most much
    mustn't my myself no nor not now of off oh ok okay on once one only or other ought our ours
    ourselves out over own really said same say says shan't she she'd she'll she's should shouldn't
    so some such than that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've this those through to too under until up upon us very was wasn't
    we we'd we'll we're we've were weren't what what's when when's where where's which while who
    who's whom why why's will with won't would wouldn't yes yet you you'd you'll you're you've your
    yours yourself yourselves d ll m re s t ve hey hi hello yeah yep wow thanks thank"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
# Answer-type cues: a "when" question is answered by a turn that says when, a "where" question
# by one naming a place (a capitalised word inside the sentence), a "how many" by a number.
_TEMPORAL = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|ago|last|next|recently|soon|since|weekend|week|month|year|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|may|june|july|"
    r"august|september|october|november|december|\d{4})\b",
    re.IGNORECASE,
)
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}")
_NUMBER = re.compile(r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twice|once|several|dozen)\b",
                     re.IGNORECASE)
_ANSWER_TYPES: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = (
    (re.compile(r"^\s*(when|what (year|month|date|day|time))\b|\bhow long ago\b", re.IGNORECASE), _TEMPORAL),
    (re.compile(r"^\s*(where|which (city|country|state|place))\b", re.IGNORECASE), _PROPER),
    (re.compile(r"\bhow (many|much|often|long)\b", re.IGNORECASE), _NUMBER),
    (re.compile(r"^\s*who\b", re.IGNORECASE), _PROPER),
)

MAX_QUERY_CHARS = 4000  # a 10k-character message still gets its first 4k considered
MAX_SCAN_TOKENS = 200  # distinct tokens looked up in the vocabulary at most
MIN_DF_CORPUS = 1000  # turns before very common terms are dropped from queries
DF_CACHE_SIZE = 200_000  # cached document frequencies per reader connection
SEARCH_MAX_POSTINGS = 100_000  # search keeps the rarest terms up to this cost (always one)


class RankParams(msgspec.Struct, frozen=True, kw_only=True):
    """How relevant turns are ranked; ``method`` picks the baselines the benchmark compares."""

    method: str = "fused"  # "fused", "bm25" or "recency"
    max_terms: int = 12  # rarest query terms kept
    max_df_share: float = 0.25  # terms in more than this share of all turns are dropped
    max_postings: int = 20_000  # rarest terms kept while their document frequencies sum to this
    candidates: int = 300  # FTS5 candidates re-ranked
    session_weight: float = 0.6
    neighbour_weight: float = 0.5
    neighbour_span: int = 2
    recency_weight: float = 0.02
    speaker_weight: float = 0.8
    feedback_docs: int = 8  # pseudo-relevance feedback: top turns read for expansion terms
    feedback_terms: int = 10
    feedback_weight: float = 0.3
    windows: int = 60  # top turns whose neighbours are fetched
    answer_type_weight: float = 0.15  # turn has what the question asks for (a time, a place, a number)
    empty_fallback: bool = True  # no topic match in this user's turns: names, then the latest turns


class QueryTerm(msgspec.Struct, frozen=True):
    """One query token: its surface form (quoted into MATCH), its index form, doc frequency."""

    surface: str
    stem: str
    df: int


class Turn(msgspec.Struct, kw_only=True):
    """A retrieved turn with the score it was ranked by."""

    message_id: str
    session_id: str
    seq: int
    role: str
    content: str
    created_at: str
    score: float
    source: str = "match"  # "match", "neighbour" or "recency"


class SearchHit(msgspec.Struct, kw_only=True):
    message_id: str
    session_id: str
    seq: int
    created_at: str
    role: str
    snippet: str
    score: float


# -- query construction --------------------------------------------------------------------


_TOKENIZERS: weakref.WeakKeyDictionary[apsw.Connection, Any] = weakref.WeakKeyDictionary()


def _tokenizer(conn: apsw.Connection) -> Any:
    """The index's own tokenizer, so Python sees exactly the terms FTS5 stores (one per connection)."""
    tok = _TOKENIZERS.get(conn)
    if tok is None:
        tok = _TOKENIZERS[conn] = conn.fts5_tokenizer("porter", ["unicode61", "remove_diacritics", "2"])
    return tok


def _tokens(conn: apsw.Connection, text: str, mode: int) -> list[tuple[str, str]]:
    """(surface, stem) pairs of ``text``; lone surrogates and NULs become separators."""
    data = text[:MAX_QUERY_CHARS].encode("utf-8", "replace").replace(b"\x00", b" ")
    out = []
    for start, end, *forms in _tokenizer(conn)(data, mode, None):
        out.append((data[start:end].decode("utf-8", "replace"), forms[0]))
    return out


def _stems(conn: apsw.Connection, text: str) -> set[str]:
    data = text.encode("utf-8", "replace")
    return {forms[0] for forms in _tokenizer(conn)(data, apsw.FTS5_TOKENIZE_DOCUMENT, None, include_offsets=False)}


def _vocab(conn: apsw.Connection) -> str:
    """A per-connection fts5vocab table over the index (temp: no schema change, no write lock)."""
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.ccn_fts_vocab USING fts5vocab(main, messages_fts, 'row')")
    return "temp.ccn_fts_vocab"


def _doc_count(conn: apsw.Connection) -> int:
    """About how many turns exist: max(rowid) is O(log n) and rows are never deleted."""
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM messages").fetchall()[0][0])


class _DfCache:
    """Document frequencies per reader connection.

    fts5vocab counts a term's documents by walking its whole posting list, which for a
    common term in a million turns costs milliseconds; frequencies move slowly, so a value
    is reused until the corpus has grown by a tenth since it was read.
    """

    def __init__(self) -> None:
        self.total = 0
        self.values: dict[str, int] = {}

    def get(self, conn: apsw.Connection, stems: list[str]) -> dict[str, int]:
        total = _doc_count(conn)
        if total > self.total * 1.1 or total < self.total or len(self.values) > DF_CACHE_SIZE:
            self.total, self.values = total, {}
        missing = [s for s in stems if s not in self.values]
        if missing:
            vocab = _vocab(conn)
            found: dict[str, int] = {}
            for i in range(0, len(missing), 500):
                chunk = missing[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(conn.execute(f"SELECT term, doc FROM {vocab} WHERE term IN ({marks})", chunk).fetchall())
            for stem in missing:
                self.values[stem] = found.get(stem, 0)
        return {s: self.values[s] for s in stems}


_DF: weakref.WeakKeyDictionary[apsw.Connection, _DfCache] = weakref.WeakKeyDictionary()


def doc_frequencies(conn: apsw.Connection, stems: list[str]) -> dict[str, int]:
    """How many turns contain each index term (0 when absent), cached per connection."""
    cache = _DF.get(conn)
    if cache is None:
        cache = _DF[conn] = _DfCache()
    return cache.get(conn, stems)


def _within_postings(terms: list[QueryTerm], budget: int) -> list[QueryTerm]:
    """Rarest terms first while their posting lists add up to at most ``budget`` (at least one).

    FTS5's bm25 walks the full posting list of every query term (for its IDF), so the sum of
    document frequencies is what a query costs; the rarest terms are also the most telling.
    """
    out: list[QueryTerm] = []
    used = 0
    for t in sorted(terms, key=lambda t: (t.df, t.stem)):
        if out and used + t.df > budget:
            break
        out.append(t)
        used += t.df
    return out


def query_terms(
    conn: apsw.Connection,
    text: str,
    *,
    max_terms: int = 12,
    max_df_share: float = 1.0,
    max_postings: int = 0,
) -> list[QueryTerm]:
    """Distinct non-stop-word tokens of ``text`` that occur in the index, rarest first, capped.

    Rare terms carry the meaning (and are cheap to match); very common ones are dropped
    because they cost the most to evaluate and barely change the ranking.
    """
    seen: dict[str, str] = {}
    for surface, stem in _tokens(conn, text, apsw.FTS5_TOKENIZE_QUERY):
        low = surface.lower()
        if low in STOP_WORDS or stem in STOP_WORDS or stem in seen:
            continue
        seen[stem] = surface
        if len(seen) >= MAX_SCAN_TOKENS:
            break
    if not seen:
        return []
    dfs = doc_frequencies(conn, list(seen))
    # In a large corpus a term in a quarter of all turns says little and costs the most;
    # in a small one every term may be "common", so the cut applies only from MIN_DF_CORPUS on.
    total = _doc_count(conn)
    cap = int(max_df_share * total) if max_df_share < 1.0 and total >= MIN_DF_CORPUS else total
    terms = [QueryTerm(seen[s], s, dfs[s]) for s in seen if 0 < dfs[s] <= cap]
    terms.sort(key=lambda t: (t.df, t.stem))
    terms = terms[:max_terms]
    return _within_postings(terms, max_postings) if max_postings else terms


def fts_query(terms: Iterable[QueryTerm]) -> str:
    """An FTS5 MATCH expression that treats every term as a literal string: "a" OR "b"."""
    return " OR ".join('"' + t.surface.replace('"', '""') + '"' for t in terms)


def owner_token(user_id: str) -> str:
    """The user's token in the index's ``owner`` column (see MIGRATION_3 in store/schema.py)."""
    return "o" + user_id.encode("utf-8", "surrogatepass").hex() + "z" * 64


def owned_match(user_id: str, terms: Iterable[QueryTerm]) -> str:
    """``owner : "<user>" AND content : (terms)``: FTS5 itself skips other users' rows."""
    return _owned(user_id, f"({fts_query(terms)})")


def _owned(user_id: str, content: str) -> str:
    """A MATCH expression limited to the user's rows; ``content`` is already a quoted FTS5 expression."""
    return f'owner : "{owner_token(user_id)}" AND content : {content}'


# -- retrieval -----------------------------------------------------------------------------

_CANDIDATES_SQL = """
SELECT m.message_id, m.session_id, m.seq, m.role, m.content, m.created_at, bm25(messages_fts, 1.0, 0.0) AS s
FROM messages_fts JOIN messages AS m ON m.rowid = messages_fts.rowid
WHERE messages_fts MATCH ? AND m.user_id = ? AND m.kind = 'chat' AND m.erased_at IS NULL
ORDER BY s LIMIT ?
"""

_WINDOWS_SQL = """
WITH w(sid, lo, hi) AS (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?))
SELECT m.message_id, m.session_id, m.seq, m.role, m.content, m.created_at
FROM w CROSS JOIN messages AS m ON m.session_id = w.sid AND m.seq BETWEEN w.lo AND w.hi
WHERE m.user_id = ? AND m.kind = 'chat' AND m.erased_at IS NULL
"""

_RECENT_SQL = """
SELECT message_id, session_id, seq, role, content, created_at FROM messages
WHERE user_id = ? AND kind = 'chat' AND erased_at IS NULL
ORDER BY created_at DESC, seq DESC LIMIT ?
"""


def _speakers(conn: apsw.Connection, user_id: str) -> dict[str, set[str]]:
    """Lower-cased speaker names → the (session_id, role) pairs they spoke as."""
    out: dict[str, set[str]] = {}
    rows = conn.execute(
        "SELECT session_id, metadata ->> '$.speakers.user', metadata ->> '$.speakers.assistant'"
        " FROM conversations WHERE user_id = ? AND metadata ->> '$.speakers' IS NOT NULL",
        (user_id,),
    )
    for session_id, user_name, assistant_name in rows:
        for name, role in ((user_name, "user"), (assistant_name, "assistant")):
            if isinstance(name, str) and name:
                out.setdefault(name.lower(), set()).add(f"{session_id}\x1f{role}")
    return out


def _candidates(
    conn: apsw.Connection,
    user_id: str,
    terms: list[QueryTerm],
    k: int,
    exclude_ids: set[str] | frozenset[str],
) -> dict[str, Turn]:
    """Top-k BM25 matches of ``terms`` among this user's turns (user filter in the SQL)."""
    if not terms:
        return {}
    rows = conn.execute(_CANDIDATES_SQL, (owned_match(user_id, terms), user_id, k)).fetchall()
    return {
        r[0]: Turn(message_id=r[0], session_id=r[1], seq=r[2], role=r[3], content=r[4], created_at=r[5], score=-r[6])
        for r in rows
        if r[0] not in exclude_ids
    }


def relevant_turns(
    conn: apsw.Connection,
    user_id: str,
    text: str,
    *,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    limit: int = 200,
    params: RankParams | None = None,
) -> list[Turn]:
    """This user's earlier turns most likely to help answer ``text``, best first."""
    p = params or RankParams()
    if p.method == "recency":
        rows = conn.execute(_RECENT_SQL, (user_id, limit + len(exclude_ids))).fetchall()
        turns = [Turn(message_id=r[0], session_id=r[1], seq=r[2], role=r[3], content=r[4], created_at=r[5],
                      score=0.0, source="recency") for r in rows if r[0] not in exclude_ids]
        return turns[:limit]
    if p.method == "bm25":
        terms = query_terms(conn, text, max_terms=10_000)
        return sorted(_candidates(conn, user_id, terms, limit, exclude_ids).values(), key=lambda t: -t.score)
    speakers = _speakers(conn, user_id) if p.speaker_weight else {}
    terms = query_terms(
        conn, text, max_terms=p.max_terms, max_df_share=p.max_df_share, max_postings=p.max_postings
    )
    named = {t.stem for t in terms if t.surface.lower() in speakers}
    content_terms = [t for t in terms if t.stem not in named] or terms
    # No more candidates than the caller can use: the cost of the rest is all fetch and Python.
    p = msgspec.structs.replace(p, candidates=min(p.candidates, max(limit, 100)))
    cands = _candidates(conn, user_id, content_terms, p.candidates, exclude_ids)
    if not cands and content_terms is not terms and p.empty_fallback:
        # The topic words occur only in other users' turns: the names alone still lead to the
        # sessions where this speaker is addressed ("Hey Joanna! …").
        content_terms = terms
        cands = _candidates(conn, user_id, content_terms, p.candidates, exclude_ids)
    if not cands:
        if not terms or not p.empty_fallback:
            return []
        # The question asks about something none of this user's turns mention: the latest
        # turns (a named speaker's first) are a better use of the budget than nothing.
        return _recent_fallback(conn, user_id, named, speakers, exclude_ids, limit)
    cue = next((answer for question, answer in _ANSWER_TYPES if question.search(text)), None)
    return _fuse(conn, user_id, cands, content_terms, named, speakers, exclude_ids, limit, p, cue)


def _recent_fallback(
    conn: apsw.Connection,
    user_id: str,
    named: set[str],
    speakers: dict[str, set[str]],
    exclude_ids: set[str] | frozenset[str],
    limit: int,
) -> list[Turn]:
    """The user's latest turns, a named speaker's before the others' (when nothing matched)."""
    rows = conn.execute(_RECENT_SQL, (user_id, limit + len(exclude_ids))).fetchall()
    wanted = _wanted_roles(named, speakers)
    turns = [Turn(message_id=r[0], session_id=r[1], seq=r[2], role=r[3], content=r[4], created_at=r[5],
                  score=0.0, source="recency") for r in rows if r[0] not in exclude_ids]
    turns.sort(key=lambda t: f"{t.session_id}\x1f{t.role}" not in wanted)  # stable: newest first within
    return turns[:limit]


def _wanted_roles(named: set[str], speakers: dict[str, set[str]]) -> set[str]:
    """The (session, role) pairs of the speakers a query names."""
    wanted: set[str] = set()
    for stem in named:
        for name, pairs in speakers.items():
            if name.startswith(stem) or stem.startswith(name):
                wanted |= pairs
    return wanted


def _normalise(turns: dict[str, Turn]) -> dict[str, float]:
    """BM25 scores scaled to (0, 1] by the best one."""
    top = max((t.score for t in turns.values()), default=0.0) or 1.0
    return {mid: max(t.score, 0.0) / top for mid, t in turns.items()}


def _expansion(
    conn: apsw.Connection, docs: list[Turn], query: set[str], named: set[str], n: int, max_postings: int = 0
) -> list[QueryTerm]:
    """Pseudo-relevance feedback: the terms that best characterise the top turns.

    The best turns for a question usually share vocabulary with the turns that answer it
    but that the question does not use ("games" → the tournament names the user mentioned).
    """
    weight: dict[str, float] = {}
    surface: dict[str, str] = {}
    for rank, doc in enumerate(docs):
        toks = _tokens(conn, doc.content, apsw.FTS5_TOKENIZE_DOCUMENT)
        if not toks:
            continue
        share = 1.0 / (len(toks) ** 0.5) / (1 + rank) ** 0.5
        for surf, stem in toks:
            if stem in query or stem in named or stem in STOP_WORDS or surf.lower() in STOP_WORDS:
                continue
            if len(stem) < 3 or stem.isdigit():
                continue
            weight[stem] = weight.get(stem, 0.0) + share
            surface.setdefault(stem, surf)
    if not weight:
        return []
    stems = sorted(weight, key=lambda s: -weight[s])[: 4 * n]  # bound the vocabulary look-ups
    dfs = doc_frequencies(conn, stems)
    total = max(_doc_count(conn), 1)
    scored = [(weight[s] * math.log(1 + total / (dfs[s] + 0.5)), s) for s in stems if dfs[s] > 1]
    scored.sort(reverse=True)
    terms = [QueryTerm(surface[s], s, dfs[s]) for _, s in scored[:n]]
    return _within_postings(terms, max_postings) if max_postings else terms


def _add_channel(cands: dict[str, Turn], lexical: dict[str, float], more: dict[str, Turn], weight: float) -> None:
    """Add a secondary match list (feedback terms) to the lexical scores, normalised, weighted."""
    for mid, w in _normalise(more).items():
        if mid not in cands:
            cands[mid] = more[mid]
            lexical[mid] = 0.0
        lexical[mid] += weight * w


def _fuse(
    conn: apsw.Connection,
    user_id: str,
    cands: dict[str, Turn],
    terms: list[QueryTerm],
    named: set[str],
    speakers: dict[str, set[str]],
    exclude_ids: set[str] | frozenset[str],
    limit: int,
    p: RankParams,
    cue: re.Pattern[str] | None = None,
) -> list[Turn]:
    """BM25 fused with feedback terms, session coverage, neighbours, speaker, answer type, recency."""
    total = max(_doc_count(conn), 1)
    idf = {t.stem: math.log(1 + (total - t.df + 0.5) / (t.df + 0.5)) for t in terms}
    idf_sum = sum(idf.values()) or 1.0
    lexical = _normalise(cands)

    # Session coverage: the share of the query's information the session's matching turns hold.
    matched: dict[str, set[str]] = {}
    for t in cands.values():
        matched.setdefault(t.session_id, set()).update(_stems(conn, t.content) & idf.keys())
    coverage = {sid: sum(idf[s] for s in stems) / idf_sum for sid, stems in matched.items()}

    if p.feedback_terms and p.feedback_weight:
        first = sorted(
            cands.values(), key=lambda t: -(lexical[t.message_id] + p.session_weight * coverage[t.session_id])
        )
        extra = _expansion(conn, first[: p.feedback_docs], set(idf), named, p.feedback_terms, p.max_postings)
        more = _candidates(conn, user_id, extra, p.candidates, exclude_ids)
        _add_channel(cands, lexical, more, p.feedback_weight)

    # Neighbours: the turns around a match often hold the answer (a reply, a follow-up).
    span = p.neighbour_span
    by_pos: dict[tuple[str, int], Turn] = {(t.session_id, t.seq): t for t in cands.values()}
    support: dict[tuple[str, int], float] = {}
    for t in cands.values():
        w = lexical[t.message_id]
        for d in range(1, span + 1):
            for key in ((t.session_id, t.seq - d), (t.session_id, t.seq + d)):
                if support.get(key, 0.0) < w:
                    support[key] = w
    ranked = sorted(cands.values(), key=lambda t: -lexical[t.message_id])[: max(p.windows, 1)]
    windows = [[t.session_id, t.seq - span, t.seq + span] for t in ranked]
    for r in conn.execute(_WINDOWS_SQL, (msgspec.json.encode(windows).decode(), user_id)):
        if r[0] not in exclude_ids and (r[1], r[2]) not in by_pos:
            by_pos[(r[1], r[2])] = Turn(message_id=r[0], session_id=r[1], seq=r[2], role=r[3], content=r[4],
                                        created_at=r[5], score=0.0, source="neighbour")

    wanted_roles = _wanted_roles(named, speakers)

    order = sorted({t.created_at[:10] + t.session_id for t in by_pos.values()})
    rank_of = {k: i / max(len(order) - 1, 1) for i, k in enumerate(order)}
    for key, t in by_pos.items():
        sid = t.session_id
        score = (
            lexical.get(t.message_id, 0.0)
            + p.neighbour_weight * support.get(key, 0.0)
            + p.session_weight * coverage.get(sid, 0.0)
            + p.recency_weight * rank_of[t.created_at[:10] + sid]
        )
        if wanted_roles and f"{sid}\x1f{t.role}" in wanted_roles:
            score += p.speaker_weight
        if cue is not None and p.answer_type_weight and cue.search(t.content):
            score += p.answer_type_weight
        t.score = score
    return sorted(by_pos.values(), key=lambda t: (-t.score, t.created_at, t.seq))[:limit]


# -- full-text search (the API endpoint) ---------------------------------------------------

_SEARCH_FROM = """
SELECT m.message_id, m.session_id, m.seq, m.created_at, m.role,
       snippet(messages_fts, 0, '[', ']', '…', 16) AS snip, {score} AS s
FROM messages_fts JOIN messages AS m ON m.rowid = messages_fts.rowid
WHERE messages_fts MATCH ? AND m.user_id = ? AND m.kind = 'chat' AND m.erased_at IS NULL
"""
_SEARCH_SQL = _SEARCH_FROM.format(score="bm25(messages_fts, 1.0, 0.0)") + "ORDER BY s, m.rowid LIMIT ? OFFSET ?"
_PHRASE_SQL = _SEARCH_FROM.format(score="0.0") + "ORDER BY messages_fts.rowid DESC LIMIT ? OFFSET ?"


def search(conn: apsw.Connection, user_id: str, q: str, limit: int = 20, offset: int = 0) -> list[SearchHit]:
    """Full-text search over one user's messages; any string is safe and treated as text.

    The rarest non-stop-word terms are ORed and ranked by BM25 (more of them ranks higher).
    A query made only of stop-words ("to be or not to be") is searched as an exact phrase,
    newest first with score 0: ranking by BM25 would walk posting lists of half the corpus.
    """
    limit = max(0, min(int(limit), 1000))
    offset = max(0, int(offset))
    terms = query_terms(conn, q, max_terms=32, max_postings=SEARCH_MAX_POSTINGS)
    if terms:
        rows = conn.execute(_SEARCH_SQL, (owned_match(user_id, terms), user_id, limit, offset)).fetchall()
    else:
        words = [surface for surface, _ in _tokens(conn, q, apsw.FTS5_TOKENIZE_QUERY)][:32]
        if not words:
            return []
        phrase = '"' + " ".join(words).replace('"', '""') + '"'
        rows = conn.execute(_PHRASE_SQL, (_owned(user_id, phrase), user_id, limit, offset)).fetchall()
    return [
        SearchHit(message_id=r[0], session_id=r[1], seq=r[2], created_at=r[3], role=r[4], snippet=r[5], score=-r[6])
        for r in rows
    ]
