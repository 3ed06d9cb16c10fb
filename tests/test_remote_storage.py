"""What S3 and Azure share (storage/remote.py): the part sizes of their uploads. (Their calls,
answers, lost answers and stop signals: tests/test_storage_contract.py on both.)"""

from __future__ import annotations

import pytest

from prefect_dr.storage import azure, s3
from prefect_dr.storage.remote import PartSizes
from prefect_dr.units import MiB

TiB = 1024 * 1024 * MiB


@pytest.mark.parametrize(("parts", "smallest", "largest", "holds"), [
    (s3.PARTS, 5 * MiB, 5 * 1024 * MiB, 2 * TiB),  # S3: parts of 5 MiB to 5 GiB
    (azure.BLOCKS, 1, 4000 * MiB, 7 * TiB),  # Azure: blocks of up to 4000 MiB
])
def test_part_sizes_double_within_what_the_store_takes(parts: PartSizes, smallest: int,
                                                      largest: int, holds: int) -> None:
    sizes = [parts.size(n) for n in range(1, parts.most + 1)]
    assert sizes[0] == parts.first == 8 * MiB
    assert sizes == sorted(sizes) and sizes[-1] == parts.cap
    assert smallest <= min(sizes) and max(sizes) <= largest
    assert sum(sizes) > holds
    assert parts.size(parts.step) == parts.first and parts.size(parts.step + 1) == 2 * parts.first
