"""Email providers, one module each, behind :class:`worker.providers.base.Provider`.

Which providers exist, how each is configured and built, and which webhook goes with it
is declared by each module's ``PROVIDER`` and read through
:mod:`worker.providers.registry`; the two functions every process needs are re-exported
here. A provider whose settings are incomplete raises
:class:`~worker.providers.base.ConfigurationError` naming the variable, at startup
rather than at the first send.
"""

from __future__ import annotations

from worker.providers.registry import check_provider, make_provider

__all__ = ["check_provider", "make_provider"]
