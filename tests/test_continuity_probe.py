"""Character probe (16-D) and relational state (7-D): range, determinism, direction."""

from __future__ import annotations

import time

import numpy as np

from ccn_node.continuity.bench_character import sample_answer
from ccn_node.continuity.probe import (
    DIMENSIONS,
    RELATIONAL_DIMENSIONS,
    LexicalProbe,
    Probe,
    relational_state,
)

P = LexicalProbe()
D = {name: i for i, name in enumerate(DIMENSIONS)}
R = {name: i for i, name in enumerate(RELATIONAL_DIMENSIONS)}


def test_dimension_names() -> None:
    assert len(DIMENSIONS) == 16 and len(set(DIMENSIONS)) == 16
    assert {"honest", "precise", "direct", "rigorous"} <= set(DIMENSIONS)
    assert len(RELATIONAL_DIMENSIONS) == 7
    assert isinstance(P, Probe)
    assert P.dimensions == DIMENSIONS


def test_range_and_determinism() -> None:
    texts = ["", "   ", "ok", "?!?!", sample_answer(), "😀 " * 50, "a\n" * 200,
             "word " * 2000, "```\ncode\n```", "1 2 3 4 5 6 7 8 9"]
    for t in texts:
        v = P.measure(t)
        assert v.shape == (16,) and v.dtype == np.float64
        assert np.isfinite(v).all()
        assert ((v >= 0) & (v <= 1)).all(), (t[:20], v)
        assert np.array_equal(v, P.measure(t, context="ignored"))
    assert np.array_equal(P.measure(""), np.full(16, 0.5))


def test_directions() -> None:
    hedgy = "I think it might perhaps work, but possibly not. It seems likely, maybe."
    sure = "It works. The test passed. It is correct and it will stay correct."
    assert P.measure(hedgy)[D["humble"]] > P.measure(sure)[D["humble"]]
    assert P.measure(sure)[D["confident"]] > P.measure(hedgy)[D["confident"]]

    precise = "Latency fell from 14.2 ms to 3.1 ms at p95 over 10000 requests in v2.3."
    vague = "Some things got kind of faster, various stuff improved somewhat, etc."
    assert P.measure(precise)[D["precise"]] > 0.7 > 0.3 > P.measure(vague)[D["precise"]]

    we = "We should do this together; let's check our notes and we will decide."
    i = "I will check the notes and decide."
    assert P.measure(we)[D["collaborative"]] > P.measure(i)[D["collaborative"]]

    listy = "Steps:\n- one\n- two\n- three\n\n## Next\n1. four\n"
    flat = "Do one, then two, then three, then four."
    assert P.measure(listy)[D["structured"]] > P.measure(flat)[D["structured"]]

    q = "Why does it fail? What if the cache is cold? Is the index used?"
    assert P.measure(q)[D["curious"]] > P.measure(flat)[D["curious"]]

    honest = "I don't know yet, and I was wrong earlier; however, here is the caveat."
    boast = "This is definitely the best, a perfect and guaranteed solution, always."
    assert P.measure(honest)[D["honest"]] > 0.5 > P.measure(boast)[D["honest"]]

    direct = "Yes. Use the second option."
    fluffy = ("Great question! Of course, I'd be happy to help, and well, basically it "
              "really just depends on quite a lot of very different considerations.")
    assert P.measure(direct)[D["direct"]] > P.measure(fluffy)[D["direct"]]

    short = "Done."
    assert P.measure(short)[D["concise"]] > P.measure(sample_answer())[D["concise"]]


def test_timing_sanity(capsys) -> None:
    text = sample_answer(2048)
    for _ in range(20):
        P.measure(text)
    t0 = time.perf_counter()
    n = 300
    for _ in range(n):
        P.measure(text)
    us = (time.perf_counter() - t0) / n * 1e6
    with capsys.disabled():
        print(f"\n[probe] 2 kB answer: {us:.0f} µs per measure (target ≤ 1000 µs)")


def test_relational_state_ranges() -> None:
    cases = [
        [],
        [("system", "ignored")],
        [("user", "")],
        [("user", "hi"), ("assistant", "")],
        [("user", "Can you fix the cache?"), ("assistant", "Yes, the cache is fixed.")],
        [("user", "x " * 500), ("assistant", "y")] * 10,
        [("assistant", "hello")] * 5,
    ]
    for turns in cases:
        v = relational_state(turns)
        assert v.shape == (7,) and np.isfinite(v).all()
        assert ((v >= 0) & (v <= 1)).all(), (turns[:2], v)
    assert np.array_equal(relational_state([]), np.full(7, 0.5))


def test_relational_state_values() -> None:
    turns = [
        ("user", "Can you help me speed up the cache?"),
        ("assistant", "Glad to help. The cache misses because the index is cold."),
        ("user", "As you said earlier, the index is cold. Thanks, great."),
        ("assistant", "Good. Warm the index at startup and the cache misses drop."),
    ]
    v = relational_state(turns)
    assert v[R["turn_balance"]] == 1.0
    assert v[R["back_reference"]] == 1 / 3
    assert v[R["question_rate"]] == 0.25
    assert 0.3 < v[R["length_ratio"]] < 0.5
    assert v[R["lexical_alignment"]] > 0.1
    assert v[R["sentiment_agreement"]] > 0.8
    monologue = relational_state([("assistant", "one")] * 3 + [("user", "two")])
    assert monologue[R["turn_balance"]] == 0.5
    unrelated = relational_state([("user", "apples oranges"), ("assistant", "trains planes")])
    assert unrelated[R["lexical_alignment"]] == 0.0
