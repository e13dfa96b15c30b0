"""Email providers, one module each, behind :class:`worker.providers.base.Provider`.

Which providers exist, how each is configured and built, and which webhook goes with it
is declared by each module's ``PROVIDER`` and read through
:mod:`worker.providers.registry`; the two functions every process needs are re-exported
here. A provider whose settings are incomplete raises
:class:`~worker.providers.base.ConfigurationError` naming the variable, at startup
rather than at the first send. ``readme_table`` prints the README's provider table.

May import: :mod:`worker.webhooks` (each provider names its webhook parser),
:mod:`worker.email` (the message types and MIME), :mod:`worker.offers`,
:mod:`worker.records`, :mod:`worker.core`. May be imported by: decide and every stage
above it (delivery sends through a provider; ``settings`` looks the provider name up in
the registry, the contract's one exception).
"""

from __future__ import annotations

from worker.providers.registry import check_provider, make_provider

__all__ = ["check_provider", "make_provider"]
