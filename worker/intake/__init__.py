"""Intake: CRM events from the broker (``consumer``), stored with their customer, order
and planned sends in one transaction (``ingest``); ``publisher`` sends events the other
way (``crosssell publish``, the demo).

May import: process and every layer below; not :mod:`worker.outbox` (a sibling: they
meet only in the database). May be imported by: web, commands.
"""
