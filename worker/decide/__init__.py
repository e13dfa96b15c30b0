"""Deciding, around the pure ``triggers`` core: the live rule set read from the campaign
files (``rule_files``, ``rules``), what a decision reads from the database
(``decision_inputs``), sequence steps (``sequences``) and conversions (``attribution``).

May import: providers, webhooks, :mod:`worker.email`, :mod:`worker.offers`,
:mod:`worker.records`, :mod:`worker.core`. May be imported by: process, intake, outbox,
web, commands.
"""
