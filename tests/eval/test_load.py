"""A small load run in CI: concurrent clients against a real app process on the built-in model."""
import pytest

from safety_demo.eval.load import run_load


@pytest.mark.slow
def test_concurrent_requests_all_complete():
    result = run_load(requests=6, concurrency=3, max_new_tokens=2, model="builtin", timeout=900, queue=16)
    assert result.failed == []
    assert result.answered == 6 and result.sent == 6
    assert result.rss_mb[6] > 0
