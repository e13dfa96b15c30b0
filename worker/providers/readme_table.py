"""``python -m worker.providers.readme_table``: print the README's provider table.

Its own module because ``worker.providers`` imports the registry: run as ``python -m``,
the registry module itself would execute a second time as ``__main__`` (runpy warns),
with an empty registry of its own.
"""

from __future__ import annotations

from worker.providers import registry

if __name__ == "__main__":
    print(registry.markdown_table(registry.builtin()), end="")
