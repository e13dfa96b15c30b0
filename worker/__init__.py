"""The shell around the pure decision core (``triggers/``): I/O, state, processes.

Packages by stage of the one-way flow consumer → store → decide → plan → deliver →
record, each importing only the layers below it (``[tool.importlinter]`` in
pyproject.toml, checked by tests/test_import_layers.py; docs/architecture.md)::

    commands                      the CLI and what only it runs
    web                           HTTP pages, webhook endpoint, mail-in unsubscribe
    intake | outbox               broker → events and plans  |  sends → provider
    process                       what one worker process shares (runtime)
    decide                        rule set, decision inputs, sequences, attribution
    providers : webhooks          sending, and the providers' event callbacks
    email | offers                building a message  |  catalog and offer choice
    records                       customers, consent, privacy, activity to the CRM
    core                          settings, database, models, clock, logs, metrics, broker
"""
