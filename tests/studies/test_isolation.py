"""run_in_process: the benchmarks' one way of running a job in its own process (its result, its death, its timeout)."""

from __future__ import annotations

import os
import time


def _echo(job, queue):
    queue.put({"twice": 2 * job})


def _dies(job, queue):
    os._exit(job)


def _sleeps(job, queue):
    time.sleep(job)
    queue.put("late")


def test_result_death_and_timeout_are_told_apart():
    from experiments.benchmark import run_in_process  # here, not at the top: each spawned child imports this module

    done = run_in_process(_echo, 21)
    assert done.result == {"twice": 42} and not done.timed_out
    died = run_in_process(_dies, 3)
    assert died.result is None and died.exitcode == 3 and not died.timed_out
    stopped = run_in_process(_sleeps, 60, timeout_s=2)
    assert stopped.result is None and stopped.timed_out
