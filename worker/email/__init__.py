"""Building an email: templates in a sandbox (``rendering``, ``template_sandbox``), the
variables they see (``email_context``, with the unsubscribe links), signed unsubscribe
tokens (``tokens``), the RFC 5322 message and its value types (``mime``, ``message``) and
the template checks ``crosssell lint`` runs (``template_lint``).

May import: :mod:`worker.records`, :mod:`worker.core`; not :mod:`worker.offers` (a
sibling). May be imported by: providers and webhooks, decide, process, intake, outbox,
web, commands.
"""
