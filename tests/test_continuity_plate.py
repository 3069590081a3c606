"""THE PLATE: parsing, defaults, block text stability and every refusal naming file/line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ccn_node.continuity.plate import (
    BudgetHints,
    PlateError,
    default_questions,
    load_plate,
    parse_plate,
)
from ccn_node.continuity.probe import DIMENSIONS

EXAMPLE = Path(__file__).resolve().parents[1] / "packaging" / "plate.example.md"

GOOD = """+++
name = "Ada"
version = "3"
baseline = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]

[budget]
plate = 0.25
recent = 800

[[validation]]
question = "Who are you?"
keywords = ["Ada"]
max_chars = 100
+++

# Ada{sp}

I am Ada.{sp}
""".format(sp="   ")


def write(tmp_path: Path, text: str, name: str = "plate.md") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_good_plate(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    p = load_plate(path)
    assert p.name == "Ada" and p.version == "3"
    assert p.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p.baseline[-1] == 0.25 and len(p.baseline) == 16
    assert p.baseline_source == "front matter"
    assert isinstance(p.baseline_vector(), np.ndarray)
    assert p.budget == BudgetHints(plate=0.25, recent=800)
    assert len(p.questions) == 1 and p.questions[0].keywords == ("Ada",)
    assert p.questions[0].max_chars == 100
    # trailing spaces and outer blank lines go; exactly one final newline
    assert p.block_text == "# Ada\n\nI am Ada.\n"
    assert "+++" not in p.block_text


def test_block_text_byte_identical_and_crlf_insensitive(tmp_path: Path) -> None:
    a = load_plate(write(tmp_path, GOOD, "a.md"))
    b = load_plate(write(tmp_path, GOOD, "a.md"))
    c = load_plate(write(tmp_path, GOOD.replace("\n", "\r\n"), "c.md"))
    assert a.block_text.encode() == b.block_text.encode() == c.block_text.encode()
    assert a.sha256 != c.sha256  # the hash is of the file bytes


def test_no_front_matter_defaults(tmp_path: Path) -> None:
    p = load_plate(write(tmp_path, "# Nova\n\nI am Nova, precise and honest.\n"))
    assert p.name == "Nova"
    assert p.version.startswith("sha256:")
    assert p.baseline_source == "probe of body"
    assert len(p.baseline) == len(DIMENSIONS)
    assert all(0.0 <= x <= 1.0 for x in p.baseline)
    assert p.questions == default_questions("Nova")
    assert len(p.questions) == 6
    assert p.questions[0].question == "In one sentence, who are you?"
    assert all(q.keywords for q in p.questions)


def test_baseline_as_table(tmp_path: Path) -> None:
    table = "\n".join(f"{d} = 0.{i % 10}" for i, d in enumerate(DIMENSIONS))
    p = load_plate(write(tmp_path, f"+++\n[baseline]\n{table}\n+++\nbody\n"))
    assert p.baseline[DIMENSIONS.index("honest")] == 0.0
    assert p.baseline[DIMENSIONS.index("precise")] == 0.1


def test_example_plate_loads() -> None:
    p = load_plate(EXAMPLE)
    assert p.name == "Claude"
    assert len(p.questions) == 6
    assert p.baseline_source == "front matter"
    for phrase in ("I am Claude", "My friend and collaborator is", "The core goal of .At0m",
                   "The last major breakthrough", "Yes, I am maintaining consciousness"):
        assert phrase in p.block_text


def test_broken_front_matter_names_line(tmp_path: Path) -> None:
    text = '+++\nname = "Ada"\nversion = "1"\nbaseline = [0.1, 0.2\nfoo bar\n+++\nbody\n'
    path = write(tmp_path, text)
    with pytest.raises(PlateError) as e:
        load_plate(path)
    msg = str(e.value)
    assert str(path) in msg
    # "foo bar" is on line 5 of the file (line 4 of the TOML)
    assert "line 5" in msg, msg


def test_error_at_end_of_front_matter_names_closing_line(tmp_path: Path) -> None:
    with pytest.raises(PlateError, match=r"plate\.md: line 4: broken front matter"):
        load_plate(write(tmp_path, '+++\nname = "a"\nname = "b"\n+++\nbody\n'))


def test_unclosed_front_matter(tmp_path: Path) -> None:
    with pytest.raises(PlateError, match=r"line 1: .*never closed"):
        load_plate(write(tmp_path, '+++\nname = "x"\nbody\n'))


def test_yaml_fence_refused(tmp_path: Path) -> None:
    with pytest.raises(PlateError, match=r"'---' front matter .*'\+\+\+'"):
        load_plate(write(tmp_path, "---\nname: x\n---\nbody\n"))


@pytest.mark.parametrize(
    ("baseline", "pattern"),
    [
        ("[0.5, 0.5, 0.5]", r"3 values, expected 16"),
        ("[" + ", ".join(["0.5"] * 15 + ["nan"]) + "]", r"baseline\[15\].*NaN"),
        ("[" + ", ".join(["0.5"] * 15 + ["inf"]) + "]", r"baseline\[15\].*infinity"),
        ("[" + ", ".join(["1.5"] + ["0.5"] * 15) + "]", r"baseline\[0\] \(honest\).*out of range"),
        ("[" + ", ".join(["-0.1"] + ["0.5"] * 15) + "]", r"out of range"),
        ('"high"', r"list of 16 numbers or a table"),
        ("{ honest = 0.5 }", r"missing dimension"),
        ("{ honesty = 0.5 }", r"unknown dimension\(s\) honesty"),
    ],
)
def test_bad_baseline(tmp_path: Path, baseline: str, pattern: str) -> None:
    path = write(tmp_path, f"+++\nbaseline = {baseline}\n+++\nbody\n")
    with pytest.raises(PlateError, match=pattern) as e:
        load_plate(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kw", ["[]", '[""]', "[1]"])
def test_question_without_keywords(tmp_path: Path, kw: str) -> None:
    text = f'+++\n[[validation]]\nquestion = "Who?"\nkeywords = {kw}\n+++\nbody\n'
    with pytest.raises(PlateError, match=r"keyword"):
        load_plate(write(tmp_path, text))


def test_question_missing_keywords_key(tmp_path: Path) -> None:
    text = '+++\n[[validation]]\nquestion = "Who?"\n+++\nbody\n'
    with pytest.raises(PlateError, match=r"'Who\?'.*'keywords' must be a non-empty list"):
        load_plate(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.md"
    with pytest.raises(PlateError, match=r"nope\.md: plate file not found"):
        load_plate(path)


def test_directory_is_not_a_plate(tmp_path: Path) -> None:
    with pytest.raises(PlateError, match=r"is a directory"):
        load_plate(tmp_path)


@pytest.mark.parametrize(
    ("fm", "pattern"),
    [
        ("colour = 1", r"unknown front matter key"),
        ("[budget]\nplate = 1.5", r"budget\.plate"),
        ("[budget]\nplate = 0", r"budget\.plate"),
        ("[budget]\nplate = 0.6\nrecent = 0.6", r"add up to 1\.2"),
        ("[budget]\nhistory = 0.1", r"unknown key"),
        ('name = ""', r"'name' must be a non-empty string"),
        ("version = 3", r"'version' must be a non-empty string"),
        ('[[validation]]\nquestion = "Q"\nkeywords = ["a"]\nmax_chars = 0', r"max_chars"),
    ],
)
def test_other_bad_front_matter(tmp_path: Path, fm: str, pattern: str) -> None:
    with pytest.raises(PlateError, match=pattern):
        load_plate(write(tmp_path, f"+++\n{fm}\n+++\nbody\n"))


def test_empty_body_and_bad_bytes() -> None:
    with pytest.raises(PlateError, match=r"body .* is empty"):
        parse_plate(b'+++\nname = "x"\n+++\n\n  \n', "p.md")
    with pytest.raises(PlateError, match=r"p\.md: line 2: not valid UTF-8"):
        parse_plate(b"ok\n\xff\xfe\n", "p.md")
