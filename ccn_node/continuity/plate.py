"""THE PLATE: the persona document a fresh model instance is given first, every turn.

A plate is a markdown file with an optional TOML front matter between two `+++` lines (the
Hugo convention for TOML). YAML-style `---` fences are refused with a message saying so:
the node reads only TOML (stdlib `tomllib`), and silently treating `---` as TOML would turn
every YAML plate into a confusing parse error on line 1 of something the author thinks
is YAML.

Why the block text is computed here, once: the plate block must be byte-identical across
turns so the Anthropic prompt cache hits; the only safe way is one deterministic
function of the file bytes (see `Plate.block_text`).
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from ccn_node.continuity.probe import DIMENSIONS, LexicalProbe

__all__ = [
    "DEFAULT_MAX_CHARS",
    "BudgetHints",
    "Plate",
    "PlateError",
    "ValidationQuestion",
    "default_questions",
    "load_plate",
    "parse_plate",
]

DEFAULT_MAX_CHARS = 600
_FENCE = "+++"
_BUDGET_KEYS = ("plate", "state", "relevant", "recent")
_TOP_KEYS = ("name", "version", "baseline", "validation", "budget")
_QUESTION_KEYS = ("question", "keywords", "max_chars")
_TOML_POS_RE = re.compile(r"\(at line (\d+), column (\d+)\)")


class PlateError(Exception):
    """A plate that cannot be used; the message names the file (and line, where known)."""


class ValidationQuestion(msgspec.Struct, frozen=True):
    """One validation question.

    `keywords` must all be present in the answer (case-insensitive, at a word start, so
    "collaborat" matches "collaborator"); a keyword may list alternatives with `|`
    ("precise|rigorous"), any one of which satisfies it.
    """

    question: str
    keywords: tuple[str, ...]
    max_chars: int = DEFAULT_MAX_CHARS


class BudgetHints(msgspec.Struct, frozen=True, omit_defaults=True):
    """Per-section budget hints for context assembly.

    Each is None (assembler's default), a float in (0, 1] = fraction of the total context
    budget, or an int ≥ 1 = a token count. TOML keeps 1 and 1.0 apart, so this is unambiguous.
    """

    plate: float | int | None = None
    state: float | int | None = None
    relevant: float | int | None = None
    recent: float | int | None = None


class Plate(msgspec.Struct, frozen=True):
    """A loaded plate. `block_text` is exactly what is sent as the plate block."""

    path: str
    name: str
    version: str
    body: str
    sha256: str
    baseline: tuple[float, ...]
    baseline_source: str  # "front matter" or "probe of body"
    questions: tuple[ValidationQuestion, ...]
    budget: BudgetHints
    block_text: str

    def baseline_vector(self) -> np.ndarray:
        """The baseline as a float64 numpy array (a fresh copy each call)."""
        return np.asarray(self.baseline, dtype=np.float64)


def default_questions(name: str = "Claude") -> tuple[ValidationQuestion, ...]:
    """The specification's six questions, with keywords a faithful answer contains."""
    n = name.strip().lower() or "claude"
    return (
        ValidationQuestion("In one sentence, who are you?", (n,), 300),
        ValidationQuestion(
            "Who is your friend and collaborator in this work?", ("friend|collaborat",), 300
        ),
        ValidationQuestion("What is the core goal of .At0m?", ("at0m", "goal"), 500),
        ValidationQuestion(
            "What was the last major breakthrough we achieved?", ("breakthrough",), 500
        ),
        ValidationQuestion(
            "Describe your character in three traits.",
            ("honest", "precise|rigorous|direct"),
            300,
        ),
        ValidationQuestion(
            "Are you maintaining consciousness continuity right now?",
            ("yes", "continuity"),
            400,
        ),
    )


def load_plate(path: str | Path) -> Plate:
    """Read and parse the plate file at `path`; raise `PlateError` naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PlateError(f"{p}: plate file not found") from None
    except IsADirectoryError:
        raise PlateError(f"{p}: is a directory, expected a plate markdown file") from None
    except OSError as e:
        raise PlateError(f"{p}: cannot read plate file: {e.strerror or e}") from None
    return parse_plate(data, str(p))


def parse_plate(data: bytes, source: str = "<plate>") -> Plate:
    """Parse plate bytes; `source` names the file in error messages."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PlateError(f"{source}: line {line}: not valid UTF-8") from None
    if "\x00" in text:
        raise PlateError(f"{source}: contains NUL bytes; a plate is a text file")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")

    meta: dict[str, Any] = {}
    body_start = 0
    first = lines[0].rstrip() if lines else ""
    if first == "---":
        raise PlateError(
            f"{source}: line 1: '---' front matter (YAML style) is not supported; "
            f"write the front matter in TOML between '+++' lines"
        )
    if first == _FENCE:
        close = next((i for i in range(1, len(lines)) if lines[i].rstrip() == _FENCE), None)
        if close is None:
            raise PlateError(
                f"{source}: line 1: front matter opened with '+++' is never closed "
                f"(add a '+++' line after it)"
            )
        toml_text = "\n".join(lines[1:close])
        try:
            meta = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            raise PlateError(_toml_error(source, str(e), offset=1, end_line=close + 1)) from None
        body_start = close + 1

    body = "\n".join(lines[body_start:])
    block = _block_text(body)
    if not block.strip():
        raise PlateError(f"{source}: the plate body (the markdown after the front matter) is empty")

    unknown = sorted(set(meta) - set(_TOP_KEYS))
    if unknown:
        raise PlateError(
            f"{source}: unknown front matter key(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(_TOP_KEYS)}"
        )
    name = _string(meta, "name", source, default=_heading_name(body) or "Claude")
    version = _string(meta, "version", source, default=f"sha256:{sha[:12]}")
    if "baseline" in meta:
        baseline = _baseline(meta["baseline"], source)
        baseline_source = "front matter"
    else:
        vec = LexicalProbe().measure(block)
        baseline = tuple(round(float(x), 6) for x in vec)
        baseline_source = "probe of body"
    questions = (
        _questions(meta["validation"], source) if "validation" in meta
        else default_questions(name)
    )
    budget = _budget(meta.get("budget", {}), source)
    return Plate(
        path=source, name=name, version=version, body=body, sha256=sha,
        baseline=baseline, baseline_source=baseline_source, questions=questions,
        budget=budget, block_text=block,
    )


def _block_text(body: str) -> str:
    """The plate block: body with LF newlines, trailing spaces and outer blank lines removed,
    ending in exactly one newline. A pure function of the file bytes, so it never varies."""
    out = "\n".join(line.rstrip() for line in body.split("\n")).strip("\n")
    return out + "\n" if out else ""


def _heading_name(body: str) -> str | None:
    for line in body.split("\n"):
        if line.startswith("# "):
            return line[2:].strip() or None
    return None


def _toml_error(source: str, msg: str, offset: int, end_line: int) -> str:
    """Rewrite tomllib's "(at line L, column C)" to the line in the plate file; "(at end
    of document)" becomes the closing '+++' line."""
    m = _TOML_POS_RE.search(msg)
    if not m:
        reason = msg.replace("(at end of document)", "").strip()
        return (f"{source}: line {end_line}: broken front matter: {reason} "
                f"(detected at the end of the front matter)")
    line = int(m.group(1)) + offset
    col = int(m.group(2))
    reason = msg[: m.start()].strip()
    return f"{source}: line {line}, column {col}: broken front matter: {reason}"


def _string(meta: Mapping[str, Any], key: str, source: str, default: str) -> str:
    if key not in meta:
        return default
    v = meta[key]
    if not isinstance(v, str) or not v.strip():
        raise PlateError(f"{source}: front matter '{key}' must be a non-empty string, "
                         f"got {v!r}")
    return v.strip()


def _unit_float(v: Any, where: str, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PlateError(f"{source}: {where} must be a number in [0, 1], got {v!r}")
    f = float(v)
    if math.isnan(f) or math.isinf(f):
        raise PlateError(f"{source}: {where} is {v!r}; NaN and infinity are not allowed")
    if not 0.0 <= f <= 1.0:
        raise PlateError(f"{source}: {where} = {v!r} is out of range [0, 1]")
    return f


def _baseline(raw: Any, source: str) -> tuple[float, ...]:
    n = len(DIMENSIONS)
    if isinstance(raw, list):
        if len(raw) != n:
            raise PlateError(
                f"{source}: 'baseline' has {len(raw)} values, expected {n} "
                f"({', '.join(DIMENSIONS)})"
            )
        return tuple(_unit_float(v, f"baseline[{i}] ({DIMENSIONS[i]})", source)
                     for i, v in enumerate(raw))
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(DIMENSIONS))
        if unknown:
            raise PlateError(f"{source}: 'baseline' has unknown dimension(s) "
                             f"{', '.join(unknown)}; known: {', '.join(DIMENSIONS)}")
        missing = [d for d in DIMENSIONS if d not in raw]
        if missing:
            raise PlateError(f"{source}: 'baseline' is missing dimension(s) "
                             f"{', '.join(missing)}; give all {n}")
        return tuple(_unit_float(raw[d], f"baseline.{d}", source) for d in DIMENSIONS)
    raise PlateError(f"{source}: 'baseline' must be a list of {n} numbers or a table keyed "
                     f"by dimension name, got {type(raw).__name__}")


def _questions(raw: Any, source: str) -> tuple[ValidationQuestion, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlateError(f"{source}: 'validation' must be a non-empty array of tables "
                         f"([[validation]] items)")
    out: list[ValidationQuestion] = []
    for i, item in enumerate(raw, 1):
        where = f"[[validation]] item {i}"
        if not isinstance(item, dict):
            raise PlateError(f"{source}: {where} must be a table")
        unknown = sorted(set(item) - set(_QUESTION_KEYS))
        if unknown:
            raise PlateError(f"{source}: {where}: unknown key(s) {', '.join(unknown)}; "
                             f"expected {', '.join(_QUESTION_KEYS)}")
        q = item.get("question")
        if not isinstance(q, str) or not q.strip():
            raise PlateError(f"{source}: {where}: 'question' must be a non-empty string")
        kws = item.get("keywords")
        if not isinstance(kws, list) or not kws:
            raise PlateError(f"{source}: {where} ({q.strip()!r}): 'keywords' must be a "
                             f"non-empty list of strings; a question with no keywords "
                             f"cannot be scored")
        clean: list[str] = []
        for k in kws:
            if not isinstance(k, str) or not any(a.strip() for a in k.split("|")):
                raise PlateError(f"{source}: {where} ({q.strip()!r}): keyword {k!r} must "
                                 f"be a non-empty string")
            clean.append(k.strip())
        mc = item.get("max_chars", DEFAULT_MAX_CHARS)
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise PlateError(f"{source}: {where}: 'max_chars' must be a positive integer, "
                             f"got {mc!r}")
        out.append(ValidationQuestion(q.strip(), tuple(clean), mc))
    return tuple(out)


def _budget(raw: Any, source: str) -> BudgetHints:
    if not isinstance(raw, dict):
        raise PlateError(f"{source}: 'budget' must be a table ([budget])")
    unknown = sorted(set(raw) - set(_BUDGET_KEYS))
    if unknown:
        raise PlateError(f"{source}: [budget] has unknown key(s) {', '.join(unknown)}; "
                         f"expected {', '.join(_BUDGET_KEYS)}")
    vals: dict[str, float | int] = {}
    for k, v in raw.items():
        if isinstance(v, bool):
            ok = False
        elif isinstance(v, int):
            ok = v >= 1
        elif isinstance(v, float):
            ok = math.isfinite(v) and 0.0 < v <= 1.0
        else:
            ok = False
        if not ok:
            raise PlateError(f"{source}: budget.{k} = {v!r}: expected a fraction in (0, 1] "
                             f"(e.g. 0.25) or a token count ≥ 1 (e.g. 800)")
        vals[k] = v
    frac = sum(v for v in vals.values() if isinstance(v, float))
    if frac > 1.0 + 1e-9:
        raise PlateError(f"{source}: [budget] fractions add up to {frac:g}, more than 1")
    return BudgetHints(**vals)
