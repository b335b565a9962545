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
IMPLICIT_TLS = ("smtps", "pop3s", "imaps")


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
        # What `check` warns about is logged at start, and the server starts: see checks.warnings.
        self.warnings = checks.warnings(cfg, starting=True)


def makeService(options: Options, reactor: Any = None) -> ApplianceService:
    listenbind.print_listen_errors_plainly()
    from appliance import twistdlog
    twistdlog.install()        # Twisted's own chatter at debug level, under twistd only
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    from appliance import maillog
    for line in getattr(options, "warnings", ()):
        maillog.emit("config-warning", warning=line)
    return build(options.loaded, reactor)


class Parts:
    """The long-lived objects, built once at start and kept by every reload: thread pools, store,
    queue, POP3 maildrop locks, the connection table, the DATA spool, the listeners.

    `cfg` is the configuration in force; a reload replaces it, and `wiring` (what is rebuilt
    from it, see Wiring) with it.
    """

    def __init__(self, cfg: configmod.Config, reactor: Any, top: ApplianceService) -> None:
        from appliance import tls as tlsmod
        from appliance.imap import FolderWatcher
        from appliance.realm import MaildropLocks
        from appliance.smtp import dataspool
        from appliance.store import make_store
        from appliance.store.quota import Quotas

        self.cfg, self.reactor = cfg, reactor
        self.tls = top.tls
        self.pools = pools = {name: _pool(top, name, size) for name, size in _pool_sizes(cfg).items()}
        self.store = make_store(cfg.storage, reactor, pools["disk"], _delivery_writers(reactor, cfg.storage.format))
        self.quotas = Quotas(self.store, cfg.storage.quota, reactor, pools["disk"])   # Wiring sets the default
        self.locks = MaildropLocks()          # one POP3 lock per maildrop, across reloads too
        self.couriers: dict[str, Any] = {}    # the queue's; a reload replaces the entries
        self.queue = _queue(self, top)
        self.connections = _connection_table(cfg)
        # One spool and one memory budget for the DATA transfers of every SMTP listener.
        self.data_spool = dataspool.DataSpool(os.path.join(cfg.appliance.state_dir, dataspool.FOLDER))
        self.watcher = FolderWatcher(reactor, pools["disk"])
        self.listeners: dict[str, Any] = {}   # listener name -> its connlimit.LimitedFactory
        self.pickup: Any = None
        self.wiring: Wiring | None = None
        self.tls_module = tlsmod


class Wiring:
    """What a reload rebuilds from the configuration: directory, login, aliases, resolver,
    checks, intake, couriers and one protocol factory per listener.

    A session keeps the factory (and so the objects) it was built by until it ends; the
    listeners hand new connections to the newest Wiring's factories.
    """

    def __init__(self, cfg: configmod.Config, parts: Parts, top: ApplianceService, previous: "Wiring | None") -> None:
        from appliance.filters.build import make_pipeline, make_signer
        from appliance.intake import RecipientResolver
        from appliance.masquerade import Masquerader
        self.cfg = cfg
        parts.quotas.default = cfg.storage.quota      # [storage] quota reloads; the usage cache stays
        self.aliases = _aliases(cfg)
        self.directory, self.login, self.throttle = _directory_and_login(cfg, parts, previous)
        m = cfg.masquerade
        self.masquerader = Masquerader(m.domains, m.as_domain, m.exceptions)
        a = cfg.aliases
        self.resolver = RecipientResolver(self.directory, self.aliases, cfg.appliance.domains,
                                          delimiter=a.recipient_delimiter, catch_all=dict(a.catch_all),
                                          restricted=frozenset(a.restricted), masquerader=self.masquerader)
        self.pipeline = make_pipeline(cfg, parts.reactor, parts.pools["checks"], top,
                                      keep=_unchanged_checks(previous, cfg))
        self.intake = _intake(cfg, parts, self, make_signer(cfg, parts.reactor, parts.pools["checks"]))
        self.couriers = _couriers(cfg, parts, self.directory)
        self.factories = {**_smtp_factories(cfg, parts, self), **_access_factories(cfg, parts, self)}


def build(cfg: configmod.Config, reactor: Any) -> ApplianceService:
    """Wire directory, store, queue and listeners; children start in the order added."""
    from appliance import tls as tlsmod
    from appliance.pickup import FOLDER, PickupService
    from appliance.reload import Reloader
    top = ApplianceService(cfg, reactor, tlsmod.ServerTLS(cfg.tls, source=cfg.path), None)
    counting = _counting(top, reactor)
    parts = Parts(cfg, reactor, top)
    wiring = parts.wiring = Wiring(cfg, parts, top, None)
    top.aliases = wiring.aliases
    parts.couriers.update(wiring.couriers)
    parts.pickup = PickupService(os.path.join(cfg.appliance.state_dir, FOLDER), wiring.intake, reactor,
                                 parts.pools["disk"], max_message_size=cfg.limits.max_message_size)
    parts.pickup.setServiceParent(top)
    for name, factory in wiring.factories.items():
        _listen(top, parts, name, getattr(cfg.listen, name), factory, implicit=name in IMPLICIT_TLS)
    top.reloader = Reloader(cfg, lambda new: prepare_reload(new, parts, top))
    report = _status(top, parts, counting)
    _web(top, parts, report)
    return top


def prepare_reload(cfg: configmod.Config, parts: Parts, top: ApplianceService) -> Any:
    """Build everything `cfg` asks for beside the running objects; return the swap (appliance.reload).

    Raises (ConfigError or another exception) before anything in service is touched; the one
    thing that joins the running tree early is the checks' state store, when greylisting or the
    rate limits are turned on (build.py starts it once and every later pipeline shares it).
    """
    from appliance import tls as tlsmod
    server_tls = tlsmod.ServerTLS(cfg.tls, source=cfg.path)
    wiring = Wiring(cfg, parts, top, parts.wiring)

    def swap() -> None:
        parts.tls.adopt(server_tls)
        _resize_pools(parts, cfg)
        _set_connection_limits(parts.connections, cfg)
        parts.couriers.update(wiring.couriers)
        parts.queue.reconfigure(cfg.queue, cfg.appliance.hostname)
        parts.pickup.use(wiring.intake, cfg.limits.max_message_size)
        for name, limited in parts.listeners.items():
            if name not in wiring.factories:       # the web listener reads the wiring in service itself
                continue
            wiring.factories[name].numPorts = limited.wrappedFactory.numPorts
            limited.wrappedFactory = wiring.factories[name]
        parts.cfg, parts.wiring = cfg, wiring
        top.config, top.aliases = cfg, wiring.aliases
    return swap


def _aliases(cfg: configmod.Config) -> Any:
    """The aliases file's resolver, or None; ConfigError when the file cannot be read at all."""
    from appliance import aliases as aliasesmod
    if not cfg.aliases.file:
        return None
    try:
        return aliasesmod.AliasResolver(cfg.aliases.file, cfg.appliance.domains, cfg.aliases.allow_commands)
    except aliasesmod.AliasesError as e:
        raise ConfigError(e.problems)


def _directory_and_login(cfg: configmod.Config, parts: Parts, previous: Wiring | None) -> tuple[Any, Any, Any]:
    """The directory ([directory], [ldap]: the bind password file read again) and the Login over it.

    The Login shares the POP3 maildrop locks of every earlier one, and keeps the login throttle
    (the failure counts) unless [logins] changed.
    """
    from twisted.cred.portal import Portal
    from appliance.directory import make_directory
    from appliance.passwords import CheckQueue
    from appliance.realm import AuthThrottle, DirectoryChecker, Login, MailRealm, make_cache
    logins = cfg.logins
    password_checks = CheckQueue(parts.reactor, parts.pools["passwords"], logins.check_threads, logins.max_pending_checks)
    directory = make_directory(cfg, parts.reactor, parts.pools["directory"], password_checks)
    same_logins = previous is not None and previous.cfg.logins == logins
    throttle = previous.throttle if same_logins else AuthThrottle(parts.reactor, logins)
    # A new credential cache on every reload: the directory may have changed in ways no
    # fingerprint shows (an LDAP server without modifyTimestamp), so a reload forgets them all.
    checker = DirectoryChecker(directory, make_cache(parts.reactor, logins))
    portal = Portal(MailRealm(parts.store, parts.locks), [checker])
    return directory, Login(portal, throttle, parts.reactor), throttle


# [checks] keys each stateful check is built from: a reload that changes none of them keeps the
# running check, with what it remembers (triplets, rate windows); otherwise the new one starts
# from what the state store has committed.
_STATEFUL_CHECKS = {
    "greylist": ("greylist", "greylist_delay", "greylist_retry_window", "greylist_expire", "greylist_whitelist_after"),
    "rates": ("client_messages_per_minute", "client_recipients_per_minute", "user_messages_per_day",
              "user_new_recipients_per_day"),
}


def _unchanged_checks(previous: Wiring | None, cfg: configmod.Config) -> list[Any]:
    if previous is None:
        return []
    kept = []
    for name, keys in _STATEFUL_CHECKS.items():
        check = previous.pipeline.find(name)
        if check is not None and all(getattr(previous.cfg.checks, k) == getattr(cfg.checks, k) for k in keys):
            kept.append(check)
    return kept


def _intake(cfg: configmod.Config, parts: Parts, wiring: Wiring, signer: Any) -> Any:
    from appliance.filters.pipeline import DataStage
    from appliance.intake import Intake
    return Intake(parts.queue, cfg.appliance.hostname, wiring.resolver, clock=parts.reactor,
                  masquerader=wiring.masquerader, checks=[DataStage(wiring.pipeline)] if wiring.pipeline else [],
                  signer=signer)


def _counting(top: ApplianceService, reactor: Any) -> Any:
    """The counters of mail events (appliance.stats), started first so they see every event,
    kept in state_dir across restarts."""
    from appliance import statsfile
    from appliance.stats import CountingService
    counting = CountingService(reactor.seconds, statsfile.path_in(top.config.appliance.state_dir), scheduler=reactor)
    counting.setServiceParent(top)
    return counting


def _status(top: ApplianceService, parts: Parts, counting: Any) -> Any:
    """`mailappliance status`: the control socket's `status` command reports on these parts."""
    from appliance.status import DiskUsage, StatusReport, disk_paths
    disk = DiskUsage(disk_paths(parts.cfg), parts.reactor, parts.pools["disk"])
    report = StatusReport(top, parts.queue, counting, disk, parts.reactor.seconds, quotas=parts.quotas)
    top.getServiceNamed("control").commands.status = report.collect
    return report


def _web(top: ApplianceService, parts: Parts, report: Any) -> None:
    """`[listen] web`: the status page, /metrics and client autoconfig (appliance/web/site.py).

    Always over TLS with the server's certificate, even on loopback: a login (HTTP Basic or the
    form's session cookie) must never travel in clear, and one rule is simpler than two.
    """
    if not parts.cfg.listen.web:
        return
    from appliance.web.site import make_site
    _listen(top, parts, "web", parts.cfg.listen.web, make_site(top, parts, report), implicit=True)


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


def _set_connection_limits(table: Any, cfg: configmod.Config) -> None:
    """A reload's limits, in the table that keeps counting the connections already open."""
    limits = cfg.limits
    table.per_client, table.per_service = limits.max_connections_per_ip, limits.max_connections_per_service
    table.descriptor_reserve, table.exempt = limits.descriptor_reserve, cfg.relay.trusted_networks


def _pool_sizes(cfg: configmod.Config) -> dict[str, int]:
    directory_threads = cfg.ldap.pool_size if cfg.ldap is not None else 2
    # "checks": SPF, DKIM and DMARC (pyspf, dkimpy) block on DNS and hash whole messages.
    return {"directory": directory_threads, "passwords": cfg.logins.check_threads, "disk": 4, "queue": 2,
            "checks": 4}


def delivery_writer_count(cores: int | None, storage_format: str = "maildir") -> int:
    """One core is the reactor's; the writers get the others, one each, from 1 up to 4.

    Every writer thread takes the GIL back after each system call, and each time the reactor
    waits for it: on 2 cores, 2 writers left the reactor 12% of its time waiting for the GIL and
    12% waiting for a core, and ingest at C=10 went from 1,800 to 2,400 msg/s with 1 writer
    (issue 14), the deliveries keeping pace (group commit makes its jobs larger). More writers
    help where there are cores for them: their syncs overlap. Past 4 they only spin in the kernel
    on the Maildir folder's lock (perf: rwsem_spin_on_owner 6% of the process with 4 on 2 cores).

    mbox gets at least 2: its delivery may wait up to mbox.LOCK_TIMEOUT (10 s) for a mailbox a
    mail client has locked, and with one writer that mailbox would hold up every other delivery.
    """
    spare = max(1, min(4, (cores or 2) - 1))
    return max(2, spare) if storage_format == "mbox" else spare


def usable_cores() -> int | None:
    """The cores this process may run on (taskset, a cpuset), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _delivery_writers(reactor: Any, storage_format: str) -> Any:
    """The threads that write local deliveries (appliance.jobthreads), stopped after shutdown."""
    from appliance.jobthreads import JobThreads
    writers = JobThreads("delivery", delivery_writer_count(usable_cores(), storage_format))
    reactor.addSystemEventTrigger("after", "shutdown", writers.stop)
    return writers


def _pool(top: ApplianceService, name: str, size: int) -> Any:
    pool_service = ThreadPoolService(name, size)
    pool_service.setServiceParent(top)
    return pool_service.pool


def _resize_pools(parts: Parts, cfg: configmod.Config) -> None:
    """[ldap] pool_size and [logins] check_threads: a shrunk pool lets busy threads finish first."""
    for name, size in _pool_sizes(cfg).items():
        if parts.pools[name].max != size:
            parts.pools[name].adjustPoolsize(0, size)


def _queue(parts: Parts, top: ApplianceService) -> Any:
    """The queue, delivering through `parts.couriers`; `is_local` reads the domains in force."""
    from appliance.queue import QueueService, Spool, writer_thread
    cfg, reactor = parts.cfg, parts.reactor
    spool = Spool(os.path.join(cfg.appliance.state_dir, "queue"), reactor, parts.pools["queue"], writer_thread())
    queue = QueueService(spool, parts.couriers, cfg.queue, reactor, hostname=cfg.appliance.hostname,
                         is_local=lambda a: address.in_domains(a, parts.cfg.appliance.domains),
                         remote_concurrency=cfg.delivery.concurrency)
    queue.setName("queue")
    queue.setServiceParent(top)
    from appliance.control import ControlService, socket_path
    ControlService(socket_path(cfg.appliance.state_dir), queue, reactor).setServiceParent(top)
    return queue


def _couriers(cfg: configmod.Config, parts: Parts, directory: Any) -> dict[str, Any]:
    """Local delivery through `directory`; remote through MX routing or the smarthost."""
    from appliance.couriers.command import CommandCourier
    from appliance.couriers.local import LocalCourier
    programs = CommandCourier(parts.reactor, parts.pools["disk"]) if cfg.aliases.allow_commands else None
    return {"local": LocalCourier(directory, parts.store, programs, quotas=parts.quotas),
            "remote": _outbound(cfg, parts.reactor)}


def _outbound(cfg: configmod.Config, reactor: Any) -> Any:
    """MX routing (or the smarthost) for remote recipients."""
    from appliance.couriers.mxroute import MXRouter, make_resolver, own_addresses
    from appliance.couriers.outbound import OutboundCourier
    from appliance.couriers.sessions import Limits
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
    d = cfg.delivery
    limits = Limits(destination_concurrency=d.destination_concurrency, concurrency=d.concurrency,
                    reuse_limit=d.connection_reuse_limit, idle_time=d.connection_cache_time)
    return OutboundCourier(router, reactor, cfg.appliance.hostname, port=cfg.delivery.port,
                           smarthost=relay.smarthost, smarthost_auth=auth, client_tls_options=tls_options,
                           limits=limits)


def _pem_blocks(data: bytes) -> list[bytes]:
    """Every certificate of a PEM bundle (a CA file often holds several)."""
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


def _smtp_factories(cfg: configmod.Config, parts: Parts, wiring: Wiring) -> dict[str, Any]:
    """One SMTPFactory per configured SMTP listener, all sharing the intake and the DATA spool."""
    from appliance.smtp.mx import MXPolicy
    from appliance.smtp.server import SMTPFactory
    from appliance.smtp.submission import SubmissionPolicy
    factories = {}
    for name, (kind, implicit) in SMTP_LISTENERS.items():
        if not getattr(cfg.listen, name):
            continue
        if kind == "mx":
            policy: Any = MXPolicy(wiring.resolver, cfg.relay.trusted_networks, quotas=parts.quotas)
        else:
            policy = SubmissionPolicy(name, wiring.resolver, quotas=parts.quotas)
        factory = SMTPFactory(policy=policy, intake=wiring.intake, directory=wiring.directory, login=wiring.login,
                              hostname=cfg.appliance.hostname,
                              domains=cfg.appliance.domains, limits=cfg.limits, tls=parts.tls, tls_settings=cfg.tls,
                              implicit_tls=implicit, clock=parts.reactor,
                              unlimited_networks=cfg.relay.trusted_networks,
                              checks=wiring.pipeline, checks_settings=cfg.checks)
        factory.data_spool = parts.data_spool
        factories[name] = factory
    return factories


def _access_factories(cfg: configmod.Config, parts: Parts, wiring: Wiring) -> dict[str, Any]:
    """POP3 and IMAP, each with a plain (STLS/STARTTLS) and an implicit-TLS listener, all logging in
    through the one Login (so the POP3 maildrop lock covers both POP3 ports)."""
    from appliance.imap import IMAPFactory
    from appliance.pop3 import POP3Factory
    common = dict(login=wiring.login, hostname=cfg.appliance.hostname, tls=parts.tls, tls_settings=cfg.tls,
                  reactor=parts.reactor)
    makers = {
        "pop3": lambda implicit: POP3Factory(directory=wiring.directory, implicit_tls=implicit,
                                             max_errors=cfg.limits.max_errors,
                                             prelogin_timeout=cfg.limits.idle_timeout_prelogin, **common),
        "imap": lambda implicit: IMAPFactory(implicit_tls=implicit, pool=parts.pools["disk"], watcher=parts.watcher,
                                             max_message_size=cfg.limits.max_message_size, quotas=parts.quotas,
                                             prelogin_timeout=cfg.limits.idle_timeout_prelogin, **common),
    }
    return {name: makers[name.rstrip("s")](name in IMPLICIT_TLS)
            for name in ("pop3", "pop3s", "imap", "imaps") if getattr(cfg.listen, name)}


def _listen(top: ApplianceService, parts: Parts, name: str, description: str, factory: Any, implicit: bool) -> None:
    """A listener binds in privilegedStartService, before twistd drops to --uid/--gid.

    Every listener counts its connections in the one table (connlimit), inside implicit TLS so a
    refused TLS client reads its answer in TLS.
    """
    from appliance import connlimit
    kind = connlimit.KINDS[name]
    factory = parts.listeners[name] = connlimit.LimitedFactory(factory, parts.connections, kind, name, parts.reactor)
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
