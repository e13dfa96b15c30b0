"""``python -m bench``: run every benchmark in turn with its default settings."""

from __future__ import annotations

import sys

from bench import decide, lint


def main() -> int:
    status = decide.main([])
    print()
    sys.stdout.flush()
    return status or lint.main([])


if __name__ == "__main__":
    raise SystemExit(main())
