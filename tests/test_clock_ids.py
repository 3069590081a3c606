"""Identifiers fixed by a proposer (clock.new_id): time-ordered, random, and never shared with
a forked child, although their randomness is read from the OS in 4 KiB pieces."""

from __future__ import annotations

import os
import re
import time

from ccn_node import clock
from ccn_node.clock import new_id

ID = re.compile(r"^c_[0-9a-f]{12}[0-9a-f]{12}$")


def test_format_and_time_order() -> None:
    first = new_id("c")
    assert ID.match(first), first
    ms = int(first[2:14], 16)
    assert abs(ms - time.time() * 1000) < 5_000
    time.sleep(0.002)
    assert new_id("c")[2:14] > first[2:14]  # a later millisecond sorts after


def test_unique_across_many_pool_refills() -> None:
    ids = [new_id("c") for _ in range(50_000)]  # ~73 reads of the 4 KiB pool
    assert len(set(ids)) == len(ids)
    assert len({i[14:] for i in ids}) == len(ids)  # the random part alone is unique too


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id("c")  # the pool now holds bytes the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without running pytest's teardown
        try:
            os.write(write, "\n".join(new_id("c")[14:] for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_id("c")[14:] for _ in range(100)}
    assert len(child) == 100 and not child & parent


def test_the_pool_reads_4_kib_at_a_time(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reads: list[int] = []
    real = os.urandom
    monkeypatch.setattr(clock.os, "urandom", lambda n: reads.append(n) or real(n))
    monkeypatch.setattr(clock, "_random_pool", bytearray())
    for _ in range(1000):
        new_id("c")
    assert reads == [4096, 4096]  # 6 bytes an id: 682 ids a read
