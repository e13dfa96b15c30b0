"""Customer records: profiles, consent history and suppressions, privacy (export and
forget), the stored webhook events, and the activity outbox published to the CRM.

May import: :mod:`worker.core` (``privacy`` names :class:`worker.process.runtime.Runtime`
in a type annotation only, under ``TYPE_CHECKING``, which the import contract leaves
out). May be imported by: every stage above it (a decision
reads consent, a webhook suppresses an address, the CLI forgets a customer).
"""
