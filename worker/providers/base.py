"""What every email provider shares: one input type, one result type, one error tree.

    DeliveryError
    ├── TransientDeliveryError   retry later (SMTP 4xx, HTTP 429/5xx, timeouts, 454)
    ├── PermanentDeliveryError   never retry (SMTP 5xx, invalid recipient, HTTP 4xx)
    │   │   .hard_bounce  the address does not exist: suppress it
    │   │   .policy       5.7.x policy/auth refusal: alert the operator, keep the customer
    │   └── UnsupportedAddress  a UTF-8 local part this provider cannot carry
    └── AmbiguousDeliveryError   the message was handed over but no answer came back
                                 (connection lost or timed out after the data was sent):
                                 the provider may have accepted it, so it is never retried

    ConfigurationError (a ValueError, outside the tree above)
                                 a provider setting is missing or invalid; names the
                                 ``CROSSSELL_*`` variable(s) in ``.variables``

A configuration error is deliberately not a :class:`DeliveryError`: code that catches
delivery errors to retry or fail a send can never swallow it, so it stops the process at
start (``check_provider``) or leaves the send queued, and never marks a customer as bad.
A setting that is present but unusable (an unreadable ``CROSSSELL_SMTP_CA_FILE``) is one
too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from worker.email.message import Mailbox as Mailbox
from worker.email.message import MessageContent as MessageContent
from worker.email.message import OutgoingEmail as OutgoingEmail


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    provider: str
    provider_message_id: str


class ConfigurationError(ValueError):
    """A provider setting is missing or invalid: the operator must fix ``variables``.

    A ``ValueError`` so that callers which already refuse bad settings that way (the
    CLI's start-up check) keep doing so; never a :class:`DeliveryError`.
    """

    def __init__(self, message: str, variables: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.variables = variables


class DeliveryError(Exception):
    def __init__(self, message: str, code: int | None = None, enhanced: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced


class TransientDeliveryError(DeliveryError):
    def __init__(
        self,
        message: str,
        code: int | None = None,
        enhanced: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code, enhanced)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    def __init__(
        self,
        message: str,
        code: int | None = None,
        enhanced: str | None = None,
        hard_bounce: bool = False,
        policy: bool = False,
    ) -> None:
        super().__init__(message, code, enhanced)
        self.hard_bounce = hard_bounce
        self.policy = policy


class UnsupportedAddress(PermanentDeliveryError):
    """The provider cannot carry this address: a UTF-8 local part (RFC 6531) and no
    SMTPUTF8 on the server, or an API that documents ASCII-only addresses. Raised before
    anything is handed over; the send fails with reason ``unsupported_address`` and the
    address is not suppressed (nothing is wrong with it)."""


class AmbiguousDeliveryError(DeliveryError):
    """The provider may or may not have the message; retrying could send it twice."""


HandOver = Callable[[], None]
BatchHandOver = Callable[[int], None]
"""``send_many``'s hand-over: called with the index of the message about to leave."""


def no_hand_over() -> None:
    """For callers that record nothing before the message leaves (tests, previews)."""


class Provider(ABC):
    name: str

    @property
    def answers_together(self) -> bool:
        """True when ``send_many`` puts several messages in one request (a batch
        endpoint), so their answers arrive together; False when messages leave one after
        another (SMTP, even pipelined, answers each final dot on its own), so the caller
        records each answer as it comes and a killed worker leaves at most the message in
        flight ambiguous."""
        return False

    @abstractmethod
    def send(self, email: OutgoingEmail, hand_over: HandOver = no_hand_over) -> DeliveryResult:
        """Hand one message to the provider or raise a :class:`DeliveryError`.

        ``hand_over`` must be called once, immediately before the step that cannot be
        taken back (the final dot of SMTP DATA, sending the HTTP request, writing the
        file): the caller commits its claim there. If it raises, the message must not
        leave: abandon the attempt and let the exception through.
        """

    def send_many(
        self, emails: Sequence[OutgoingEmail], hand_over: BatchHandOver
    ) -> list[DeliveryResult | Exception]:
        """Hand several messages over, in order, reusing what can be reused (a connection,
        a batch endpoint); one entry per message, in the same order.

        ``hand_over(i)`` is called immediately before message ``i``'s irreversible step,
        exactly as ``send``'s ``hand_over``; if it raises, message ``i`` must not leave,
        its entry is that exception and the next message is tried. Otherwise the entry is
        the :class:`DeliveryResult`, or the :class:`DeliveryError` the message met. Any
        other exception in an entry is a bug met while sending that message: the caller,
        which knows whether ``hand_over(i)`` completed, decides if it may have left.

        This default sends one message at a time through :meth:`send`; providers with a
        cheaper way (SMTP pipelining, a batch API) override it.
        """
        results: list[DeliveryResult | Exception] = []
        for index, email in enumerate(emails):
            try:
                results.append(self.send(email, partial(hand_over, index)))
            except Exception as exc:  # one message's fault never stops the batch
                results.append(exc)
        return results

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; the provider may be used again afterwards."""
