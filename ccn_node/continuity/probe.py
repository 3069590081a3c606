"""Measure the character (16-D) of an answer and the relational state (7-D) of a dialogue.

Why lexical: the node must measure every answer on a Raspberry Pi in well under a
millisecond, offline and deterministically (the proposer fixes the vector before it goes
through the command log). So each dimension is a documented formula over marker-word
rates and stylometric statistics, mapped to [0, 1]. It is a *proxy* for style, not a judge
of truth: "honest" counts candour markers, it cannot check facts. The `Probe` protocol
lets a model-based probe replace it without touching callers.

Every rate is "markers per word" unless said otherwise; `sat(x, k) = x / (x + k)` maps a
non-negative rate to [0, 1) and equals 0.5 at the half-saturation constant `k`. The exact
formulas are in `LexicalProbe.measure` and in DESIGN.md ("Character and metrics").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "DIMENSIONS",
    "RELATIONAL_DIMENSIONS",
    "LexicalProbe",
    "Probe",
    "content_words",
    "relational_state",
]

#: The 16 character dimensions, in vector order. Names are stable: they key plate baselines.
DIMENSIONS: tuple[str, ...] = (
    "honest",         # candour markers (limits, uncertainty, corrections) vs overclaiming
    "precise",        # numbers, units, identifiers vs vague words
    "direct",         # no preamble/filler, short first sentence
    "rigorous",       # reasoning connectives and verification vocabulary
    "warm",           # appreciation, care and second-person address
    "curious",        # questions asked and curiosity vocabulary
    "humble",         # hedging rate (might, perhaps, I think …)
    "playful",        # exclamations, emoji, humour words
    "formal",         # long words, no contractions, no slang
    "concise",        # short answer and short sentences
    "structured",     # lists, headings, code blocks, paragraphs
    "technical",      # technical vocabulary, code and identifiers
    "reflective",     # first-person cognition (I notice, I realise, learned …)
    "collaborative",  # first-person plural (we, our, let's, together)
    "confident",      # assertive markers vs hedges
    "consistent",     # even sentence lengths (low coefficient of variation)
)

#: The 7 relational-state dimensions, in vector order.
RELATIONAL_DIMENSIONS: tuple[str, ...] = (
    "turn_balance",         # 1 − |n_user − n_assistant| / (n_user + n_assistant)
    "back_reference",       # share of turns (after the first) that refer back
    "question_rate",        # share of turns that ask a question
    "length_ratio",         # user words / all words (0.5 = equal share)
    "sentiment_agreement",  # 1 − |s_user − s_assistant| / 2
    "lexical_alignment",    # mean Jaccard of content words of adjacent turns
    "engagement",           # ½·sat(user words per turn, 12) + ½·topic continuity
)

# --- lexicons ---------------------------------------------------------------------------
# Single words and two-word phrases share one lookup table (bigrams are looked up joined
# by a space), so one pass over the tokens counts every lexicon at once.

_LEXICONS: dict[str, frozenset[str]] = {
    "candour": frozenset({
        "honestly", "frankly", "admittedly", "unsure", "uncertain", "unknown",
        "caveat", "caveats", "limitation", "limitations", "mistake", "wrong",
        "incorrect", "unclear", "unverified", "however", "although", "correction",
        "don't know", "not sure", "can't", "cannot", "was wrong", "be honest",
        "not certain", "no evidence", "i misread", "to clarify",
    }),
    "overclaim": frozenset({
        "definitely", "guaranteed", "guarantee", "always", "never", "perfect",
        "perfectly", "absolutely", "undoubtedly", "flawless", "100%", "obviously",
        "everyone", "impossible", "best", "amazing", "revolutionary",
    }),
    "vague": frozenset({
        "some", "stuff", "things", "thing", "various", "etc", "somewhat", "several",
        "many", "lots", "maybe", "whatever", "kind of", "sort of", "a bit", "more or",
        "roughly", "basically", "generally",
    }),
    "filler": frozenset({
        "certainly", "sure", "great question", "of course", "well", "just", "really",
        "very", "quite", "actually", "basically", "i think", "it seems", "in order",
        "needless to", "as an", "i'd be", "happy to",
    }),
    "reasoning": frozenset({
        "because", "therefore", "thus", "hence", "since", "so", "implies", "assume",
        "assuming", "evidence", "verify", "verified", "test", "tested", "measure",
        "measured", "proof", "prove", "check", "checked", "if", "then", "unless",
        "given", "consequently", "specifically", "counterexample", "condition",
        "follows", "reason",
    }),
    "warm": frozenset({
        "glad", "happy", "thanks", "thank", "appreciate", "love", "friend", "care",
        "welcome", "sorry", "kind", "wonderful", "lovely", "delighted", "enjoy",
        "enjoyed", "hope", "dear", "warmly", "gladly", "pleasure",
    }),
    "second_person": frozenset({"you", "your", "yours", "you're", "you've", "yourself"}),
    "curious": frozenset({
        "wonder", "wondering", "curious", "interesting", "intriguing", "explore",
        "exploring", "why", "what if", "how come", "fascinating", "question",
        "questions", "puzzle", "discover",
    }),
    "hedge": frozenset({
        "might", "may", "perhaps", "possibly", "likely", "probably", "could",
        "seems", "seem", "appears", "suggests", "i think", "i believe", "i guess",
        "not sure", "tend", "arguably", "somewhat", "approximately", "roughly",
    }),
    "playful": frozenset({
        "fun", "haha", "lol", "joke", "joking", "play", "playful", "silly", "whee",
        "yay", "oops", "hooray", "wink", "pun", "funny", "ha",
    }),
    "slang": frozenset({
        "gonna", "wanna", "gotta", "yeah", "yep", "nope", "ok", "okay", "cool", "hey",
        "kinda", "sorta", "stuff", "awesome", "lol",
    }),
    "technical": frozenset({
        "function", "api", "database", "algorithm", "latency", "throughput", "server",
        "client", "protocol", "schema", "query", "index", "vector", "matrix", "thread",
        "process", "memory", "cache", "compile", "runtime", "module", "config",
        "parameter", "integer", "string", "byte", "bytes", "hash", "sqlite", "python",
        "numpy", "raft", "json", "http", "token", "tokens", "merkle", "log", "commit",
        "benchmark", "regex", "async", "socket", "kernel", "cpu", "disk",
    }),
    "reflective": frozenset({
        "i notice", "i realise", "i realize", "i remember", "i learned", "i feel",
        "i wonder", "reflect", "reflecting", "reflection", "myself", "realise",
        "realize", "learned", "remember", "noticed", "looking back", "in hindsight",
        "i've", "my own", "i found",
    }),
    "we": frozenset({
        "we", "us", "our", "ours", "ourselves", "we're", "we've", "we'll", "let's",
        "together", "jointly", "collaborate", "collaboration", "shared",
    }),
    "assertive": frozenset({
        "will", "is", "are", "must", "clearly", "certainly", "definitely", "know",
        "does", "do", "always", "exactly", "confirm", "confirmed", "precisely",
        "sure",
    }),
}

_LEX_NAMES: tuple[str, ...] = tuple(_LEXICONS)
_LEX_INDEX: dict[str, int] = {name: i for i, name in enumerate(_LEX_NAMES)}


def _build_lookup() -> dict[str, tuple[int, ...]]:
    table: dict[str, list[int]] = {}
    for name, words in _LEXICONS.items():
        for w in words:
            table.setdefault(w, []).append(_LEX_INDEX[name])
    return {w: tuple(ix) for w, ix in table.items()}


_LOOKUP: dict[str, tuple[int, ...]] = _build_lookup()
_BIGRAM_FIRSTS: frozenset[str] = frozenset(w.split(" ")[0] for w in _LOOKUP if " " in w)

# One tokenizer pass over the lower-cased text: words (may hold inner . _ - / ' % so that
# "3.5ms", "file.py", "don't" and "100%" stay whole), sentence terminators and newlines.
_TOKEN_RE = re.compile(r"[a-z0-9_$][a-z0-9_'’.\-/%$]*[a-z0-9_%]|[a-z0-9_]|[.!?]+|\n")
_LIST_LINE_RE = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_HEADING_RE = re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.MULTILINE)
_EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
_UNIT_RE = re.compile(
    r"^\d[\d.,]*(?:%|ms|µs|us|ns|s|kb|mb|gb|tb|b|hz|khz|mhz|ghz|x|k|m|kg|g|km|cm|mm|px|"
    r"st|nd|rd|th)?$"
)

_STOPWORD_TEXT = (
    "a an the and or but if then else of to in on at by for with from as is are was were be "
    "been being am do does did have has had it its it's this that these those there here i "
    "you he she we they me him her us them my your his our their mine yours not no yes so "
    "too very can could will would shall should may might must just also than into about "
    "over under up down out off what which who whom whose when where why how all any both "
    "each few more most other some such only own same again further once i'm you're we're "
    "they're i've we've don't can't won't isn't aren't let's"
)
_STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())


def _sat(x: float, k: float) -> float:
    """Map a non-negative rate to [0, 1): 0.5 at k. Why: no hard cap to tune per corpus."""
    return x / (x + k) if x > 0.0 else 0.0


def _words_and_marks(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Lower-cased words of `text` without stop words or 1–2-letter tokens, in order.

    Why here: the relational state and the Φ̂/emergence metrics must tokenize the same way
    as the probe, or overlap figures would depend on which module tokenized.
    """
    out: list[str] = []
    for t in _TOKEN_RE.findall(text.lower()):
        c = t[0]
        if (c.isalnum() or c == "_") and len(t) > 2 and t not in _STOPWORDS:
            out.append(t.replace("’", "'"))
    return out


@runtime_checkable
class Probe(Protocol):
    """A character probe: turns one answer into a vector in [0, 1]^len(dimensions)."""

    name: str
    dimensions: tuple[str, ...]

    def measure(self, text: str, context: str | None = None) -> np.ndarray:
        """Return a float64 vector, one value in [0, 1] per dimension, finite."""
        ...


class LexicalProbe:
    """Deterministic lexical/stylometric probe (no model, no network, ≤ 1 ms per 2 kB).

    `context` (e.g. the user's message) is accepted for the protocol and ignored: the
    lexical probe rates the answer alone, so the same answer always gets the same vector.
    """

    name: str = "lexical-v1"
    dimensions: tuple[str, ...] = DIMENSIONS

    def measure(self, text: str, context: str | None = None) -> np.ndarray:
        """Vector of the 16 `DIMENSIONS`; an answer with no words gets 0.5 (no evidence)."""
        tokens = _words_and_marks(text)
        counts = [0] * len(_LEX_NAMES)
        lookup = _LOOKUP
        firsts = _BIGRAM_FIRSTS
        n_words = n_digit = n_ident = n_long = n_contr = 0
        n_sent_q = n_sent_excl = 0
        sent_lens: list[int] = []
        first_sentence = -1
        cur = 0
        prev = ""
        for t in tokens:
            c = t[0]
            if c in ".!?\n":
                if cur:
                    sent_lens.append(cur)
                    if first_sentence < 0:
                        first_sentence = cur
                    if "?" in t:
                        n_sent_q += 1
                    elif "!" in t:
                        n_sent_excl += 1
                cur = 0
                prev = ""
                continue
            cur += 1
            n_words += 1
            hit = lookup.get(t)
            if hit:
                for i in hit:
                    counts[i] += 1
            if prev in firsts:
                hit = lookup.get(prev + " " + t)
                if hit:
                    for i in hit:
                        counts[i] += 1
            prev = t
            if len(t) >= 7:
                n_long += 1
            if "'" in t or "’" in t:
                n_contr += 1
            if c.isdigit():
                n_digit += 1
                if _UNIT_RE.match(t):
                    n_ident += 1
            elif "_" in t or "/" in t or ("." in t and not t.endswith(".")):
                n_ident += 1
        if cur:
            sent_lens.append(cur)
            if first_sentence < 0:
                first_sentence = cur
        if n_words == 0:
            return np.full(len(DIMENSIONS), 0.5)

        w = float(n_words)
        r = np.asarray(counts, dtype=np.float64) / w
        L = _LEX_INDEX
        n_sent = max(len(sent_lens), 1)
        lens = np.asarray(sent_lens, dtype=np.float64)
        mean_len = float(lens.mean())
        cv = float(lens.std() / mean_len) if len(sent_lens) > 1 else 0.0
        lines = text.count("\n") + 1
        list_lines = len(_LIST_LINE_RE.findall(text))
        headings = len(_HEADING_RE.findall(text))
        fences = text.count("```") // 2
        inline_code = text.count("`") // 2 - fences * 3
        emoji = len(_EMOJI_RE.findall(text))
        paragraphs = text.count("\n\n")
        hedge = r[L["hedge"]]
        excl_rate = n_sent_excl / n_sent
        q_rate = n_sent_q / n_sent

        v = np.empty(len(DIMENSIONS), dtype=np.float64)
        # honest: 0.5 with no markers; candour pushes up, overclaiming down.
        v[0] = 0.5 + 0.5 * np.tanh((r[L["candour"]] - r[L["overclaim"]]) / 0.02)
        # precise: numbers/units/identifiers against vague words.
        spec = (n_digit + n_ident) / w
        v[1] = 0.5 + 0.5 * np.tanh((spec - r[L["vague"]]) / 0.06)
        # direct: little filler, and a first sentence that gets to the point (≤ 12 words).
        v[2] = (1.0 - _sat(r[L["filler"]], 0.02)) * (0.5 + 0.5 * 12.0 / max(first_sentence, 12))
        # rigorous: reasoning / verification vocabulary.
        v[3] = _sat(r[L["reasoning"]], 0.03)
        # warm: warm words, plus addressing the reader (half weight).
        v[4] = _sat(r[L["warm"]] + 0.5 * r[L["second_person"]], 0.03)
        # curious: share of sentences that are questions, and curiosity words.
        v[5] = _sat(q_rate + 5.0 * r[L["curious"]], 0.15)
        # humble: hedging rate.
        v[6] = _sat(hedge, 0.015)
        # playful: exclamation share, emoji and humour words.
        v[7] = _sat(excl_rate + (emoji + counts[L["playful"]]) / w * 10.0, 0.15)
        # formal: long words, against contractions and slang.
        v[8] = float(np.clip(
            (n_long / w) / 0.30 - 4.0 * (n_contr / w) - 8.0 * r[L["slang"]], 0.0, 1.0))
        # concise: short answers and short sentences (½ at 120 words, ½ at 18 words/sentence).
        v[9] = 0.5 * (120.0 / (120.0 + w)) + 0.5 * (18.0 / (18.0 + mean_len))
        # structured: list/heading lines, code blocks, paragraph breaks.
        v[10] = _sat((list_lines + 2 * headings + 2 * fences + paragraphs) / lines, 0.15)
        # technical: technical vocabulary, identifiers and code.
        v[11] = _sat(r[L["technical"]] + (n_ident + max(inline_code, 0) + 5 * fences) / w,
                     0.04)
        # reflective: first-person cognition.
        v[12] = _sat(r[L["reflective"]], 0.01)
        # collaborative: first-person plural.
        v[13] = _sat(r[L["we"]], 0.02)
        # confident: assertive markers against hedges.
        v[14] = 0.5 + 0.5 * np.tanh((r[L["assertive"]] - 2.0 * hedge) / 0.04)
        # consistent: even sentence lengths; one sentence counts as fully consistent.
        v[15] = 1.0 / (1.0 + cv)
        np.clip(v, 0.0, 1.0, out=v)
        return v


# --- relational state -------------------------------------------------------------------

_BACKREF_RE = re.compile(
    r"\b(?:earlier|before|previously|again|last time|as (?:you|we|i) (?:said|mentioned|"
    r"discussed|noted)|you (?:said|mentioned|asked)|we (?:said|discussed|talked|agreed)|"
    r"remember|recall|back to|above|that (?:idea|point|question))\b"
)
_POS = frozenset({
    "good", "great", "thanks", "thank", "glad", "happy", "love", "like", "nice", "yes",
    "agree", "excellent", "helpful", "works", "right", "perfect", "wonderful", "enjoy",
    "appreciate", "interesting", "fine", "well", "better", "best", "cool",
})
_NEG = frozenset({
    "bad", "wrong", "no", "not", "hate", "sad", "angry", "broken", "fails", "fail",
    "failed", "error", "problem", "worse", "worst", "annoying", "disagree", "confused",
    "sorry", "unfortunately", "terrible", "awful", "bug", "never",
})


def _sentiment(words: Sequence[str]) -> float:
    """(pos − neg) / (pos + neg + 1) ∈ (−1, 1): +1 smoothing keeps neutral text near 0."""
    pos = sum(1 for x in words if x in _POS)
    neg = sum(1 for x in words if x in _NEG)
    return (pos - neg) / (pos + neg + 1.0)


def relational_state(turns: Sequence[tuple[str, str]]) -> np.ndarray:
    """7-D relational state of a dialogue (roles "user"/"assistant"; others ignored).

    Measured on the turns given (callers pass a recent window), each in [0, 1]; an empty
    dialogue gets 0.5 everywhere (no evidence). Formulas: `RELATIONAL_DIMENSIONS` and
    DESIGN.md.
    """
    kept = [(role, text) for role, text in turns if role in ("user", "assistant")]
    if not kept:
        return np.full(len(RELATIONAL_DIMENSIONS), 0.5)
    toks = [_words_and_marks(text) for _, text in kept]
    words = [[t for t in ts if t[0] not in ".!?\n"] for ts in toks]
    content = [set(content_words(text)) for _, text in kept]
    is_user = np.array([role == "user" for role, _ in kept])
    nw = np.array([len(w) for w in words], dtype=np.float64)

    n_user = int(is_user.sum())
    n_asst = len(kept) - n_user
    turn_balance = 1.0 - abs(n_user - n_asst) / len(kept)

    later = [text.lower() for _, text in kept[1:]]
    back_reference = (
        sum(1 for t in later if _BACKREF_RE.search(t)) / len(later) if later else 0.0
    )
    question_rate = sum(1 for _, text in kept if "?" in text) / len(kept)

    w_user = float(nw[is_user].sum())
    w_all = float(nw.sum())
    length_ratio = w_user / w_all if w_all > 0 else 0.5

    s_user = [_sentiment(w) for w, u in zip(words, is_user, strict=True) if u]
    s_asst = [_sentiment(w) for w, u in zip(words, is_user, strict=True) if not u]
    sentiment_agreement = (
        1.0 - abs(float(np.mean(s_user)) - float(np.mean(s_asst))) / 2.0
        if s_user and s_asst else 0.5
    )

    pairs = list(pairwise(content))
    jacc = [len(a & b) / len(a | b) for a, b in pairs if a or b]
    lexical_alignment = float(np.mean(jacc)) if jacc else 0.0
    continuity = sum(1 for a, b in pairs if a & b) / len(pairs) if pairs else 0.0
    user_len = float(nw[is_user].mean()) if n_user else 0.0
    engagement = 0.5 * _sat(user_len, 12.0) + 0.5 * continuity

    v = np.array([
        turn_balance, back_reference, question_rate, length_ratio,
        sentiment_agreement, lexical_alignment, engagement,
    ], dtype=np.float64)
    np.clip(v, 0.0, 1.0, out=v)
    return v
