"""Remote delivery: one SMTP transaction per message and destination, through the MX hosts or a smarthost.

The queue asks for one recipient at a time; calls for the same message and domain made in the
same reactor turn are gathered into one transaction (several RCPTs, one DATA) and each caller
gets its own recipient's result. Retrying later is the queue's business: this module only says,
per recipient, delivered, temporary (try again) or permanent (bounce).

Transactions to one host share sessions (couriers/sessions.py: kept a few seconds for the next
message), and deliveries run in parallel up to a limit per destination and in all.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance import address, maillog
from appliance.couriers import smtpclient
from appliance.couriers.mxroute import MXRouter, Route
from appliance.couriers.sessions import Key, Limits, SessionCache, Slots
from appliance.envelope import Envelope, Recipient
from appliance.errors import ApplianceError, PermanentFailure, TemporaryFailure
from appliance.interfaces import ICourier
from appliance.message import field as header_field

Outcome = str | ApplianceError            # where it went, or why not


@dataclass
class _Batch:
    """The recipients of one message for one destination, gathered during one reactor turn."""

    envelope: Envelope
    domain: str
    message: bytes
    waiters: dict[str, list[defer.Deferred]] = field(default_factory=dict)


@implementer(ICourier)
class OutboundCourier:
    """Delivers to the recipient domain's MX hosts in order, or to the smarthost when one is set.

    Connection failures and 4xx replies move on to the next MX host (the 4xx recipients only);
    when every host has failed, the last error is returned as a TemporaryFailure. A 5xx is
    permanent for its recipient. The smarthost replaces MX routing: TLS is required and its
    certificate verified (against `client_tls_options`, by default the system CAs), and AUTH
    PLAIN is used when `smarthost_auth` is set.
    """

    def __init__(self, router: MXRouter, reactor, hostname: str, port: int = 25,
                 smarthost: tuple[str, int] | None = None, smarthost_auth: tuple[str, str] | None = None,
                 client_tls_options: IOpenSSLClientConnectionCreator | None = None,
                 timeouts: smtpclient.Timeouts = smtpclient.Timeouts(), limits: Limits = Limits()) -> None:
        self._router = router
        self._reactor = reactor
        self._hostname = hostname
        self._port = port
        self._smarthost = smarthost
        self._smarthost_auth = smarthost_auth
        self._timeouts = timeouts
        self._gathering: dict[tuple[str, str, str], _Batch] = {}
        self._slots = Slots(limits.destination_concurrency, limits.concurrency)
        self.sessions = SessionCache(reactor, limits)
        self._settings = self._session_settings(client_tls_options)

    def _session_settings(self, client_tls_options: IOpenSSLClientConnectionCreator | None) -> smtpclient.Settings:
        """One Settings for every session: the smarthost's (TLS required and verified, AUTH) or the MXs'."""
        if self._smarthost:
            host, port = self._smarthost
            return smtpclient.settings_for(host, port, self._hostname, tls_policy="required", tls_hostname=host,
                                           client_tls_options=client_tls_options, auth=self._smarthost_auth,
                                           timeouts=self._timeouts)
        return smtpclient.Settings(self._hostname, "opportunistic", None, None, self._timeouts, "")

    def close(self) -> defer.Deferred:
        """QUIT every kept session (and the busy ones once done); fires when all are gone."""
        return self.sessions.close()

    def deliver(self, envelope: Envelope, recipient: Recipient, message: bytes) -> defer.Deferred:
        """Deferred[str] "host[ip]:port 250 ...", or a Temporary/PermanentFailure (x.y.z, "... said: ...")."""
        if not address.is_valid(recipient.address):
            return defer.fail(PermanentFailure("5.1.3", f"bad recipient address {recipient.address!r}"))
        domain = address.domain_of(recipient.address)
        # A forward (an alias of ours sending on) carries `Delivered-To: <the alias>`, as Postfix's
        # local(8) adds it: when the mail comes back, intake sees the loop. Each alias its own batch.
        key = (envelope.id, "" if self._smarthost else domain, recipient.original)
        batch = self._gathering.get(key)
        if batch is None:
            if recipient.original:
                message = header_field("Delivered-To", " ".join(recipient.original.split())) + message
            batch = self._gathering[key] = _Batch(envelope, domain, message)
            self._reactor.callLater(0, self._start, key)
        waiter: defer.Deferred = defer.Deferred()
        batch.waiters.setdefault(recipient.address, []).append(waiter)
        return waiter

    def _start(self, key: tuple[str, str, str]) -> None:
        batch = self._gathering.pop(key)
        d = defer.ensureDeferred(self._deliver(batch))
        d.addErrback(self._internal_error, batch)
        d.addCallback(self._fan_out, batch)

    @staticmethod
    def _internal_error(failure: Failure, batch: _Batch) -> dict[str, Outcome]:
        """A bug must not lose mail: log it, and let the queue try again later."""
        maillog.error("outbound delivery", id=batch.envelope.id, domain=batch.domain, problem=repr(failure.value))
        return dict.fromkeys(batch.waiters, TemporaryFailure("4.3.0", "internal error in outbound delivery"))

    @staticmethod
    def _fan_out(outcomes: dict[str, Outcome], batch: _Batch) -> None:
        for rcpt, waiters in batch.waiters.items():
            for waiter in waiters:
                outcome = outcomes[rcpt]
                if isinstance(outcome, str):
                    waiter.callback(outcome)
                else:
                    waiter.errback(outcome)

    async def _route(self, domain: str) -> Route:
        """The hosts to try; the smarthost is connected to by name, so it may be a name with several addresses."""
        if self._smarthost:
            return [(self._smarthost[0], self._smarthost[0])]
        return await self._router.route(domain)

    async def _deliver(self, batch: _Batch) -> dict[str, Outcome]:
        """Check the sender, then deliver once a slot for the destination is free."""
        if batch.envelope.sender and not address.is_valid(batch.envelope.sender):
            problem = PermanentFailure("5.1.7", f"bad sender address {batch.envelope.sender!r}")
            return dict.fromkeys(batch.waiters, problem)
        destination = self._smarthost[0] if self._smarthost else batch.domain
        await self._slots.acquire(destination)
        try:
            return await self._try_hosts(batch)
        finally:
            self._slots.release(destination)

    async def _try_hosts(self, batch: _Batch) -> dict[str, Outcome]:
        """Try each host in turn with the recipients still undecided."""
        pending = list(batch.waiters)
        try:
            route = await self._route(batch.domain)
        except ApplianceError as problem:
            return dict.fromkeys(pending, problem)
        outcomes: dict[str, Outcome] = dict.fromkeys(pending, TemporaryFailure("4.4.4", "no host to try"))
        for host, ip in route:
            try:
                replies = await self._send(host, ip, batch, pending)
            except PermanentFailure as problem:
                return outcomes | dict.fromkeys(pending, problem)
            except TemporaryFailure as problem:
                outcomes.update(dict.fromkeys(pending, problem))
                continue
            outcomes.update(_judge(replies, self._where(host, ip)))
            pending = [rcpt for rcpt in pending if isinstance(outcomes[rcpt], TemporaryFailure)]
            if not pending:
                break
        return outcomes

    def _where(self, host: str, ip: str) -> str:
        if self._smarthost:
            return f"{host}:{self._smarthost[1]}"
        return f"{host}[{ip}]:{self._port}"

    async def _send(self, host: str, ip: str, batch: _Batch, recipients: list[str]) -> smtpclient.Results:
        """One transaction with the host: on a kept session when there is one, else on a new one.

        A kept session the peer had dropped (SessionGone) is no failure of the message: it goes
        again, once, on a fresh session.
        """
        key: Key = (host, self._smarthost[1]) if self._smarthost else (ip, self._port)
        session = self.sessions.take(key)
        if session is not None:
            try:
                return await self._transaction(key, session, batch, recipients)
            except smtpclient.SessionGone:
                self.sessions.discard(key)
        settings = self._settings
        if not self._smarthost:
            settings = replace(settings, peer=f"{ip}:{self._port}")
        session = await smtpclient.open_session(self._reactor, key[0], key[1], settings)
        self.sessions.track(key, session)
        return await self._transaction(key, session, batch, recipients)

    async def _transaction(self, key: Key, session: smtpclient.Session, batch: _Batch,
                           recipients: list[str]) -> smtpclient.Results:
        try:
            return await session.transaction(batch.envelope.sender, recipients, batch.message)
        finally:
            await self.sessions.give_back(key, session)


def _judge(replies: smtpclient.Results, where: str) -> dict[str, Outcome]:
    """Each recipient's reply as delivered (2xx), temporary (4xx) or permanent (5xx)."""
    outcomes: dict[str, Outcome] = {}
    for rcpt, (code, text) in replies.items():
        status = smtpclient.status_of(code, text)
        if code // 100 == 2:
            outcomes[rcpt] = f"{where} {code} {text}"
        elif code // 100 == 5:
            outcomes[rcpt] = PermanentFailure(status, f"{where} said: {code} {text}")
        else:                                   # 4xx, or a 1xx/3xx that has no business here
            status = status if code // 100 == 4 else "4.5.0"
            outcomes[rcpt] = TemporaryFailure(status, f"{where} said: {code} {text}")
    return outcomes
