"""deploy.latency_table's warmup argument (added for chapter 6, whose batches take a tenth of a second)."""
import pytest

from course_lib import deploy


@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_latency_table_warmup_calls(warmup):
    calls = []
    rows = deploy.latency_table({"baseline": lambda: calls.append(1)}, (1,), rounds=3, repeats=2, warmup=warmup)
    assert len(calls) == 3 * (2 + warmup)
    assert rows["baseline"]["x_faster"] == 1.0


def test_latency_table_rejects_negative_warmup():
    with pytest.raises(ValueError, match="warmup"):
        deploy.latency_table({"baseline": lambda: None}, (1,), rounds=1, repeats=1, warmup=-1)
