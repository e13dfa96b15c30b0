"""Outbox and delivery: due sends are claimed and published (``dispatcher``), the Celery
application and its thin tasks (``app``, ``tasks``), delivery with the recheck,
rendering and the provider call (``delivery``), claims with leases (``claims``) and
coupon codes (``coupons``).

May import: process and every layer below; not :mod:`worker.intake` (a sibling). May be
imported by: web, commands.
"""
