"""twistd Options and makeService(): the one place that builds and wires every object.

The configuration is loaded and checked whole in Options.postOptions, so a bad file makes
twistd exit non-zero with one line per problem before anything binds.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.python import usage

from appliance import address, checks, config as configmod, listenbind
from appliance.errors import ConfigError
from appliance.service import ApplianceService, ThreadPoolService

# Listener name -> (policy kind, implicit TLS)
SMTP_LISTENERS = {"smtp": ("mx", False), "submission": ("submission", False), "smtps": ("submission", True)}


class Options(usage.Options):
    optParameters = [["config", "c", None, f"Path of mailappliance.conf (default: "
                                           f"${configmod.ENVIRONMENT_VARIABLE}, else {configmod.DEFAULT_PATH})."]]

    def postOptions(self) -> None:
        self["config"] = configmod.chosen_path(self["config"])
        try:
            cfg = configmod.load(self["config"])
            problems = checks.check_files(cfg, starting=True)
        except ConfigError as e:
            raise usage.UsageError("configuration is not valid:\n" + "\n".join(e.problems))
        except OSError as e:
            raise usage.UsageError(f"{self['config']}: cannot read: {e.strerror}")
        if problems:
            raise usage.UsageError("configuration is not valid:\n" + "\n".join(problems))
        self.loaded = cfg


def makeService(options: Options, reactor: Any = None) -> ApplianceService:
    listenbind.print_listen_errors_plainly()
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    return build(options.loaded, reactor)


class Parts:
    """The shared objects every listener is built from."""

    def __init__(self, cfg: configmod.Config, reactor: Any, top: ApplianceService) -> None:
        from appliance import tls as tlsmod
        from appliance.realm import make_login
        from appliance.directory import make_directory
        from appliance.masquerade import Masquerader
        from appliance.passwords import CheckQueue
        from appliance.store import make_store

        self.cfg, self.reactor = cfg, reactor
        self.tls = top.tls
        self.pools = pools = {name: _pool(top, name, size) for name, size in _pool_sizes(cfg).items()}
        # Password checks on threads of their own: guessing never delays the lookups RCPT needs.
        self.checks = CheckQueue(reactor, pools["passwords"], cfg.logins.check_threads, cfg.logins.max_pending_checks)
        self.directory = make_directory(cfg, reactor, pools["directory"], self.checks)
        self.store = make_store(cfg.storage, reactor, pools["disk"])
        self.login = make_login(self.directory, self.store, reactor, settings=cfg.logins)
        m = cfg.masquerade
        self.masquerader = Masquerader(m.domains, m.as_domain, m.exceptions)
        self.queue = _queue(cfg, reactor, top, pools["queue"], self.directory, self.store)
        self.tls_module = tlsmod


def build(cfg: configmod.Config, reactor: Any) -> ApplianceService:
    """Wire directory, store, queue and listeners; children start in the order added."""
    from appliance import aliases as aliasesmod, tls as tlsmod
    server_tls = tlsmod.ServerTLS(cfg.tls, source=cfg.path)
    try:
        aliases = (aliasesmod.AliasResolver(cfg.aliases.file, cfg.appliance.domains, cfg.aliases.allow_commands)
                   if cfg.aliases.file else None)
    except aliasesmod.AliasesError as e:
        raise ConfigError(e.problems)
    top = ApplianceService(cfg, reactor, server_tls, aliases)
    counting = _counting(top, reactor)
    parts = Parts(cfg, reactor, top)
    parts.connections = _connection_table(cfg)
    _smtp_listeners(top, parts, aliases)
    _access_listeners(top, parts)
    _status(top, parts, counting)
    return top


def _counting(top: ApplianceService, reactor: Any) -> Any:
    """The counters of mail events (appliance.stats), started first so they see every event,
    kept in state_dir across restarts."""
    from appliance import statsfile
    from appliance.stats import CountingService
    counting = CountingService(reactor.seconds, statsfile.path_in(top.config.appliance.state_dir), scheduler=reactor)
    counting.setServiceParent(top)
    return counting


def _status(top: ApplianceService, parts: Parts, counting: Any) -> None:
    """`mailappliance status`: the control socket's `status` command reports on these parts."""
    from appliance.status import DiskUsage, StatusReport, disk_paths
    disk = DiskUsage(disk_paths(parts.cfg), parts.reactor, parts.pools["disk"])
    report = StatusReport(top, parts.queue, counting, disk, parts.reactor.seconds)
    top.getServiceNamed("control").commands.status = report.collect


def _connection_table(cfg: configmod.Config) -> Any:
    """The one table of open connections every listener counts in (appliance.connlimit)."""
    from appliance import connlimit
    limits = cfg.limits
    connlimit.raise_descriptor_limit()
    return connlimit.ConnectionTable(per_client=limits.max_connections_per_ip,
                                     per_service=limits.max_connections_per_service,
                                     descriptor_reserve=limits.descriptor_reserve,
                                     exempt=cfg.relay.trusted_networks,
                                     descriptors=None)   # RLIMIT_NOFILE, read live


def _pool_sizes(cfg: configmod.Config) -> dict[str, int]:
    directory_threads = cfg.ldap.pool_size if cfg.ldap is not None else 2
    # "checks": SPF, DKIM and DMARC (pyspf, dkimpy) block on DNS and hash whole messages.
    return {"directory": directory_threads, "passwords": cfg.logins.check_threads, "disk": 4, "queue": 2,
            "checks": 4}


def _pool(top: ApplianceService, name: str, size: int) -> Any:
    pool_service = ThreadPoolService(name, size)
    pool_service.setServiceParent(top)
    return pool_service.pool


def _queue(cfg: configmod.Config, reactor: Any, top: ApplianceService, pool: Any, directory: Any, store: Any) -> Any:
    from appliance.couriers.command import CommandCourier
    from appliance.couriers.local import LocalCourier
    from appliance.queue import QueueService, Spool
    programs = CommandCourier(reactor, top.getServiceNamed("pool-disk").pool) if cfg.aliases.allow_commands else None
    couriers = {"local": LocalCourier(directory, store, programs), "remote": _outbound(cfg, reactor)}
    spool = Spool(os.path.join(cfg.appliance.state_dir, "queue"), reactor, pool)
    queue = QueueService(spool, couriers, cfg.queue, reactor, hostname=cfg.appliance.hostname,
                         is_local=lambda a: address.in_domains(a, cfg.appliance.domains))
    queue.setName("queue")
    queue.setServiceParent(top)
    from appliance.control import ControlService, socket_path
    ControlService(socket_path(cfg.appliance.state_dir), queue, reactor).setServiceParent(top)
    return queue


def _outbound(cfg: configmod.Config, reactor: Any) -> Any:
    """MX routing (or the smarthost) for remote recipients."""
    from appliance.couriers.mxroute import MXRouter, make_resolver, own_addresses
    from appliance.couriers.outbound import OutboundCourier
    # Who we are, so that mail routed back to us (an MX or a literal naming us) fails with 5.4.6.
    myself = own_addresses([cfg.listen.smtp] if cfg.listen.smtp else [], cfg.delivery.port)
    router = MXRouter(make_resolver(cfg.delivery.nameservers, reactor), cfg.appliance.hostname, myself,
                      allow_literals=cfg.delivery.allow_address_literals, clock=reactor)
    relay = cfg.relay
    auth = None
    if relay.smarthost_user:
        with open(relay.smarthost_password_file, encoding="utf-8") as f:
            auth = (relay.smarthost_user, f.readline().strip())
    tls_options = None
    if relay.smarthost and relay.smarthost_ca_file:
        from twisted.internet import ssl
        with open(relay.smarthost_ca_file, "rb") as f:
            authorities = [ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())]
        tls_options = ssl.optionsForClientTLS(relay.smarthost[0], trustRoot=ssl.trustRootFromCertificates(authorities))
    return OutboundCourier(router, reactor, cfg.appliance.hostname, port=cfg.delivery.port,
                           smarthost=relay.smarthost, smarthost_auth=auth, client_tls_options=tls_options)


def _pem_blocks(data: bytes) -> list[bytes]:
    """Every certificate of a PEM bundle (a CA file often holds several)."""
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


def _smtp_listeners(top: ApplianceService, parts: Parts, aliases: Any) -> None:
    from appliance.intake import Intake, RecipientResolver
    from appliance.smtp.mx import MXPolicy
    from appliance.smtp.server import SMTPFactory
    from appliance.smtp.submission import SubmissionPolicy
    cfg = parts.cfg
    resolver = RecipientResolver(parts.directory, aliases, cfg.appliance.domains,
                                 delimiter=cfg.aliases.recipient_delimiter, catch_all=dict(cfg.aliases.catch_all),
                                 restricted=frozenset(cfg.aliases.restricted), masquerader=parts.masquerader)
    from appliance.filters.build import make_pipeline, make_signer
    from appliance.filters.pipeline import DataStage
    pipeline = make_pipeline(cfg, parts.reactor, parts.pools["checks"], top)
    intake = Intake(parts.queue, cfg.appliance.hostname, resolver, clock=parts.reactor, masquerader=parts.masquerader,
                    checks=[DataStage(pipeline)] if pipeline else [],
                    signer=make_signer(cfg, parts.reactor, parts.pools["checks"]))
    from appliance.pickup import FOLDER, PickupService
    PickupService(os.path.join(cfg.appliance.state_dir, FOLDER), intake, parts.reactor,
                  top.getServiceNamed("pool-disk").pool,
                  max_message_size=cfg.limits.max_message_size).setServiceParent(top)
    from appliance.smtp import dataspool
    # One spool and one memory budget for the DATA transfers of every SMTP listener.
    data_spool = dataspool.DataSpool(os.path.join(cfg.appliance.state_dir, dataspool.FOLDER))
    for name, (kind, implicit) in SMTP_LISTENERS.items():
        description = getattr(cfg.listen, name)
        if not description:
            continue
        if kind == "mx":
            policy: Any = MXPolicy(resolver, cfg.relay.trusted_networks)
        else:
            policy = SubmissionPolicy(name, resolver)
        factory = SMTPFactory(policy=policy, intake=intake, directory=parts.directory, login=parts.login,
                              hostname=cfg.appliance.hostname,
                              domains=cfg.appliance.domains, limits=cfg.limits, tls=parts.tls, tls_settings=cfg.tls,
                              implicit_tls=implicit, clock=parts.reactor,
                              unlimited_networks=cfg.relay.trusted_networks,
                              checks=pipeline, checks_settings=cfg.checks)
        factory.data_spool = data_spool
        _listen(top, parts, name, description, factory, implicit)


def _access_listeners(top: ApplianceService, parts: Parts) -> None:
    """POP3 and IMAP, each with a plain (STLS/STARTTLS) and an implicit-TLS listener, all logging in
    through the one Login (so the POP3 maildrop lock covers both POP3 ports)."""
    from appliance.imap import FolderWatcher, IMAPFactory
    from appliance.pop3 import POP3Factory
    cfg = parts.cfg
    pool = top.getServiceNamed("pool-disk").pool
    common = dict(login=parts.login, hostname=cfg.appliance.hostname, tls=parts.tls, tls_settings=cfg.tls,
                  reactor=parts.reactor)
    watcher = FolderWatcher(parts.reactor, pool)
    makers = {
        "pop3": lambda implicit: POP3Factory(directory=parts.directory, implicit_tls=implicit,
                                             max_errors=cfg.limits.max_errors,
                                             prelogin_timeout=cfg.limits.idle_timeout_prelogin, **common),
        "imap": lambda implicit: IMAPFactory(implicit_tls=implicit, pool=pool, watcher=watcher,
                                             max_message_size=cfg.limits.max_message_size,
                                             prelogin_timeout=cfg.limits.idle_timeout_prelogin, **common),
    }
    for name in ("pop3", "pop3s", "imap", "imaps"):
        description = getattr(cfg.listen, name)
        if not description:
            continue
        implicit = name.endswith("s")
        _listen(top, parts, name, description, makers[name.rstrip("s")](implicit), implicit)


def _listen(top: ApplianceService, parts: Parts, name: str, description: str, factory: Any, implicit: bool) -> None:
    """A listener binds in privilegedStartService, before twistd drops to --uid/--gid.

    Every listener counts its connections in the one table (connlimit), inside implicit TLS so a
    refused TLS client reads its answer in TLS.
    """
    from appliance import connlimit
    kind = connlimit.KINDS[name]
    factory = connlimit.LimitedFactory(factory, parts.connections, kind, name, parts.reactor)
    if implicit:
        factory = parts.tls_module.implicit(factory, parts.tls)
    listener = _Listener(endpoints.serverFromString(parts.reactor, description), factory)
    listener.config_path, listener.description = parts.cfg.path, description
    listener._raiseSynchronously = True
    listener.setName(f"listen-{name}")
    listener.setServiceParent(top)


class _Listener(StreamServerEndpointService):
    """A [listen] service whose failed bind is one line naming the key and the reason (listenbind)."""

    config_path = description = ""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise listenbind.listen_error(self.config_path, self.name.removeprefix("listen-"), self.description,
                                          e) from None
