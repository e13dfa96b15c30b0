"""Every test of the pure core runs with the file system closed (``file_guard``): a test
here that needs a file belongs in ``tests/worker``, or builds its text in memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis.configuration import storage_directory

from tests.triggers.file_guard import closed_file_system


@pytest.fixture(autouse=True)
def closed_files() -> Iterator[list[str]]:
    """The refused attempts of the test (Hypothesis keeps its example database open)."""
    examples = storage_directory(intent_to_write=False).path
    with closed_file_system(also_allowed=[str(examples)]) as attempts:
        yield attempts
    assert attempts == [], f"the pure core used the file system: {attempts}"
