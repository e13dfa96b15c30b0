"""The environment for a subprocess coverage must not trace.

``make test`` measures the ``crosssell`` and ``celery`` processes the tests start
(``patch = ["subprocess"]``): coverage passes ``COVERAGE_PROCESS_CONFIG`` down, and a
process that inherits it is traced. Tracing costs CPU in every line the process runs
(the delivery fault fleets: ~40 % of their CPU), so processes whose code other tests
already measure run untraced (docs/testing.md, "Coverage").
"""

from __future__ import annotations

import os
from collections.abc import Mapping

COVERAGE_VARIABLE = "COVERAGE_PROCESS_CONFIG"


def untraced(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) without coverage's variable."""
    source = os.environ if env is None else env
    return {name: value for name, value in source.items() if name != COVERAGE_VARIABLE}
