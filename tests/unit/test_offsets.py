import pytest

from services.common.offsets import PartitionOffsets


def test_commit_moves_only_past_a_finished_prefix() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12, 13):
        offsets.add(o)
    assert offsets.complete(12) is None  # 10 and 11 still running
    assert offsets.complete(10) == 11
    assert offsets.complete(11) == 13  # 11 and the earlier 12 both done
    assert offsets.complete(13) == 14
    assert len(offsets) == 0


def test_gaps_in_offsets_are_fine() -> None:
    # compacted topics and transaction markers leave holes
    offsets = PartitionOffsets()
    offsets.add(5)
    offsets.add(9)
    assert offsets.complete(9) is None
    assert offsets.complete(5) == 10


def test_offsets_must_grow() -> None:
    offsets = PartitionOffsets()
    offsets.add(3)
    with pytest.raises(ValueError, match="not after"):
        offsets.add(3)
