"""``ccn-node bench cluster`` must keep working: a short run of its parts on 3 local processes
(the figures themselves are for the benchmark, not for a test)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from ccn_node.replication.bench_raft import _cluster, run_cluster_ceiling_bench, run_raftlog_bench


def check_cpu_split(cpu: dict[str, object], thread: str) -> None:
    nodes = {k: v for k, v in cpu.items() if k != "machine_busy"}
    assert sorted(k.split("_")[0] for k in nodes) == ["follower", "follower", "leader"]
    busy = cpu["machine_busy"]
    assert busy is None or 0.0 <= busy <= 1.0  # type: ignore[operator]
    if sys.platform.startswith("linux"):
        for node in nodes.values():
            assert node["cores"] > 0 and node["cpu_us_per_msg"] > 0  # type: ignore[index]
            assert thread in node["threads"], node  # type: ignore[index]


@pytest.mark.timeout(120)
def test_raftlog_bench_counts_what_every_node_applied() -> None:
    result = run_raftlog_bench(duration=0.5, writer_counts=(8,))["writers_8"]
    assert result["count"] > 0 and result["ops_per_s"] > 0
    # every follower reached the leader's applied index (the bench raises if one stops short)
    assert 0 <= result["followers_catch_up_s"] < 10 and 0 <= result["index_catch_up_s"] < 10
    # the followers' catch-up counts, and so does every node's full-text index catching up
    counted_time = result["elapsed_s"] + result["followers_catch_up_s"] + result["index_catch_up_s"]
    assert result["ops_per_s"] == pytest.approx(result["count"] / counted_time)
    check_cpu_split(result["cpu"], "ccn-raft-apply")


@pytest.mark.timeout(120)
def test_bare_pysyncobj_ceiling_runs() -> None:
    result = run_cluster_ceiling_bench(duration=0.3, writer_counts=(4,))["writers_4"]
    assert result["count"] > 0
    check_cpu_split(result["cpu"], "Thread (_autoTickThread)")


@pytest.mark.timeout(60)
def test_a_node_that_dies_at_start_fails_the_bench_instead_of_hanging_it() -> None:
    """Before, the driver kept its copy of each node's pipe end open: a node that died before
    answering (an import error, a port taken) left ``recv`` waiting forever."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with code [1-9]"):
        _cluster(os._exit, {}, [1], 0.1)  # os._exit(settings, pipe): a TypeError in the node, exit code 1
    assert time.monotonic() - started < 30


@pytest.mark.timeout(180)
def test_http_cluster_bench_writes_and_turns_through_every_node() -> None:
    from ccn_node.benchmarks.cluster_http import run_http_cluster_bench

    result = run_http_cluster_bench(duration=0.5, write_clients=(6,), turn_clients=3)
    for key in ("writes_6_clients", "turns_3_clients"):
        load = result[key]
        assert load["count"] > 0 and "failed" not in load, load
        assert load["refused_503"] == 0, load  # a healthy cluster refuses nothing
        if sys.platform.startswith("linux"):
            assert sorted(k for k in load["cpu"] if k.startswith("node_")) == ["node_0", "node_1", "node_2"]
            assert all(load["cpu"][f"node_{i}"]["cores"] > 0 for i in range(3)), load["cpu"]
    assert result["turns_3_clients"]["messages_per_s"] == pytest.approx(2 * result["turns_3_clients"]["ops_per_s"])
