"""The environment for a subprocess coverage must not trace.

``make coverage`` measures the ``crosssell`` and ``celery`` processes the tests start
(``patch = ["subprocess"]``): coverage passes ``COVERAGE_PROCESS_CONFIG`` down, and a
process that inherits it is traced. Tracing costs CPU in every line the process runs
(the delivery fault fleets: ~40 % of their CPU), so processes whose code other tests
already measure run untraced (docs/testing.md, "Coverage").
"""

from __future__ import annotations

import os

COVERAGE_VARIABLE = "COVERAGE_PROCESS_CONFIG"


def untraced() -> dict[str, str]:
    """This process's environment without coverage's variable."""
    return {name: value for name, value in os.environ.items() if name != COVERAGE_VARIABLE}
