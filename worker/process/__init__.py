"""What one worker process shares: the :class:`~worker.process.runtime.Runtime`
(settings, clock, rule store, renderer, provider, built lazily), the provider's rate
limiter (``rate_limit``) and the start-up line each process logs (``startup``).

May import: decide and every layer below it. May be imported by: intake, outbox, web,
commands.
"""
