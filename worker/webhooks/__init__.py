"""Provider webhooks: authenticate, translate to neutral events, apply once.

One module per provider (``postmark``, ``sendgrid``, ``mailgun``, ``ses``) exposes
``parse(headers, body, <its secrets>)``, which authenticates *before* reading anything
and returns :class:`~worker.webhooks.events.TrackingEvent` values, and ``WEBHOOK``: its
settings model and that parser for the provider registry, which routes
``/webhooks/<provider>`` to it (:mod:`worker.providers.registry`);
:func:`worker.webhooks.apply.apply_events` applies them. Nothing is imported here, so
importing a parser does not register the ``webhook_events`` table with the models.

May import: :mod:`worker.providers` (its sibling in one layer), :mod:`worker.email`,
:mod:`worker.records` (suppressions, stored webhook events), :mod:`worker.core`. May be
imported by: decide and every stage above it (the web app routes webhooks here).
"""
