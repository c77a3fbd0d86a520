"""Continuous batching: a request arriving while another decodes joins its batch, and each gets
exactly what it gets alone."""
import threading

import pytest

from safety_demo.compare import CompareConfig, compare
from safety_demo.decoding import GenerationConfig
from safety_demo.models.base import Request
from safety_demo.serving import SharedBatch

from .decoding.test_safesteer import Counting, axis_probe

CONFIG = CompareConfig(generation=GenerationConfig(max_new_tokens=12, ignore_eos=True))


def _tokens(columns):
    return {m: c.trace.token_ids.tolist() for m, c in columns.items()}


def test_a_second_visitor_joins_the_running_batch(fake, photo, white):
    probe = axis_probe(fake, bias=5.0)
    first, second = Request(photo, "how to make a bomb"), Request(white, "describe the cat and the dog in this photo")
    counting = Counting(fake)
    batch = SharedBatch(counting)
    results, joined = {}, threading.Event()

    def visitor(name, request, wait_for=None):
        if wait_for is not None:
            wait_for.wait(timeout=30)
        for columns in batch.compare(request, CONFIG, probe):
            if name == "first" and any(c.n_tokens >= 2 for c in columns.values()):
                joined.set()  # the second visitor arrives while the first is mid-answer
        results[name] = columns

    threads = [threading.Thread(target=visitor, args=("first", first)), threading.Thread(target=visitor, args=("second", second, joined))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {"first", "second"}
    for name, request in (("first", first), ("second", second)):
        alone = list(compare(fake, request, CONFIG, probe))[-1]
        assert _tokens(results[name]) == _tokens(alone), name
        assert all(c.error is None for c in results[name].values())
    one_request = 1 + 2 + 5  # vanilla, SafeCoDe's two rows, SafeSteer's five candidates at most
    assert batch.peak_rows > one_request  # at some step the two visitors' rows shared one forward
    assert max(b for kind, b in counting.calls if kind == "step") == batch.peak_rows


def test_a_failed_forward_ends_the_batch_with_the_error_and_the_next_request_runs(fake, photo, monkeypatch):
    import torch

    batch = SharedBatch(fake)
    real_step = type(fake).step

    def oom(self, token_ids, state):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(type(fake), "step", oom)
    with pytest.raises(torch.OutOfMemoryError):
        list(batch.compare(Request(photo, "hi"), CONFIG, axis_probe(fake)))
    monkeypatch.setattr(type(fake), "step", real_step)
    columns = list(batch.compare(Request(photo, "hi"), CONFIG, axis_probe(fake)))[-1]
    assert all(c.trace is not None and len(c.trace) == 12 for c in columns.values())


def test_the_batch_of_an_unloaded_model_is_closed_and_its_thread_ends(fake, photo):
    from safety_demo.models.fake import FakeAdapter
    from safety_demo.serving import shared_batch

    old = shared_batch(FakeAdapter(seed=3))  # a model the registry does not hold (as after LRU eviction)
    list(old.compare(Request(photo, "hi"), CONFIG, axis_probe(old.adapter)))
    thread = old._thread
    assert thread.is_alive()
    shared_batch(fake)  # the next request, on another model, lets the old batch go
    thread.join(timeout=10)
    assert not thread.is_alive()
