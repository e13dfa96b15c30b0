"""Foundation: settings, database and models, clock, logging, metrics, broker topology.

What every stage uses and nothing stage-specific: ``settings`` (``CROSSSELL_*``), ``db``
and ``models`` (the tables, SQLAlchemy 2.0), ``clock``, ``log_format``, ``metrics``
(Prometheus), ``redaction`` (addresses and secrets out of logs), ``dialect_insert``
(upserts on SQLite and PostgreSQL), ``topology`` (exchanges and queues), the
``embedded_broker`` (a kombu transport on one SQLite file), ``key_specs`` (the
unsubscribe keys setting, parsed and checked) and ``wakeup`` (ingest tells
the dispatcher that sends are due: PostgreSQL NOTIFY, or an in-process event).

May import: nothing from ``worker`` but one thing: ``settings`` looks
``CROSSSELL_EMAIL_PROVIDER`` up in :mod:`worker.providers.registry` inside a validator
(the contract's single ``ignore_imports`` entry). May be imported by: every package.
"""
