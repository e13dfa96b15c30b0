"""What customers and providers reach over the network: the HTTP app with the
unsubscribe and preference pages and the provider webhooks endpoint (``web``), and the
mail receiver behind the List-Unsubscribe mailto (``unsubscribe_mail``).

May import: every layer below (intake and outbox included, though it needs neither).
May be imported by: :mod:`worker.commands`.
"""
