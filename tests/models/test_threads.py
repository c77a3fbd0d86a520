"""serve_mode / all_cores: one OpenMP team at a time in a server, nothing changed elsewhere.

serve_mode changes the process for good, so the server cases run in a fresh interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from safety_demo.models import threads

SERVER = textwrap.dedent("""
    import json, os, threading, torch
    from safety_demo.models import threads

    def tasks():  # OS threads of this process: a team's workers are threads too
        return len(os.listdir("/proc/self/task"))

    cores = threads.serve_mode()
    seen = {"cores": cores}

    def worker():
        seen["outside"] = torch.get_num_threads()
        before = tasks()
        with threads.all_cores():
            seen["inside"] = torch.get_num_threads()
            with threads.all_cores():
                seen["nested"] = torch.get_num_threads()
            torch.ones(1 << 22).sum()  # a parallel op: the team's workers start
            seen["workers while claimed"] = tasks() - before
        seen["after"] = torch.get_num_threads()
        seen["workers after"] = tasks() - before
        torch.ones(1 << 22).sum()  # outside: one core, no team again
        seen["workers after an op outside"] = tasks() - before

    t = threading.Thread(target=worker)
    t.start(); t.join()
    print(json.dumps(seen))
""")


@pytest.fixture(scope="module")
def server() -> dict:
    if threads.libgomp() is None:
        pytest.skip("torch here does not run on libgomp")
    if len(os.sched_getaffinity(0)) < 2 or os.environ.get("OMP_NUM_THREADS") == "1":
        pytest.skip("one core: there is no team to share")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", SERVER], capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_in_a_server_a_thread_has_one_core_outside_all_cores_and_every_core_inside(server):
    assert server["cores"] >= 2
    assert server["outside"] == 1
    assert server["inside"] == server["nested"] == server["cores"]
    assert server["after"] == 1


def test_all_cores_leaves_no_idle_team_behind(server):
    """The team's workers exist while claimed and are gone after: no idle team makes another
    thread's workers sleep between ops."""
    assert server["workers while claimed"] == server["cores"] - 1
    assert server["workers after"] == 0
    assert server["workers after an op outside"] == 0


def test_outside_a_server_all_cores_changes_nothing():
    assert not threads.serving()  # the test process never called serve_mode
    before = torch.get_num_threads()
    with threads.all_cores():
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
