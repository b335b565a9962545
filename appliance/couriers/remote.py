"""Remote delivery (to the recipient's MX or a smarthost): a placeholder until outbound delivery lands."""
from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from appliance.envelope import Envelope, Recipient
from appliance.errors import TemporaryFailure
from appliance.interfaces import ICourier


@implementer(ICourier)
class RemoteCourier:
    """Always a temporary failure for now: the message waits in the queue rather than being lost or
    bounced, and is delivered once outbound delivery exists (or bounced at max_queue_lifetime)."""

    def deliver(self, envelope: Envelope, recipient: Recipient, message: bytes) -> Deferred:
        return fail(TemporaryFailure("4.4.0", "remote delivery not available yet"))
