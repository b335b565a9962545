"""twistd Options and makeService(): the one place that builds and wires every object.

The configuration is loaded and checked whole in Options.postOptions, so a bad file makes
twistd exit non-zero with one line per problem before anything binds.
"""
from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.python import usage

from appliance import address, config as configmod
from appliance.errors import ConfigError
from appliance.service import ApplianceService, ThreadPoolService

# Listener name -> (policy kind, implicit TLS)
SMTP_LISTENERS = {"smtp": ("mx", False), "submission": ("submission", False), "smtps": ("submission", True)}


class Options(usage.Options):
    optParameters = [["config", "c", configmod.DEFAULT_PATH, "Path of mailappliance.conf."]]

    def postOptions(self) -> None:
        try:
            cfg = configmod.load(self["config"])
            problems = configmod.check_files(cfg)
        except ConfigError as e:
            raise usage.UsageError("configuration is not valid:\n" + "\n".join(e.problems))
        except OSError as e:
            raise usage.UsageError(f"{self['config']}: cannot read: {e.strerror}")
        if problems:
            raise usage.UsageError("configuration is not valid:\n" + "\n".join(problems))
        self.loaded = cfg


def makeService(options: Options, reactor: Any = None) -> ApplianceService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    return build(options.loaded, reactor)


def build(cfg: configmod.Config, reactor: Any) -> ApplianceService:
    """Wire directory, store, queue and listeners; children start in this order."""
    from appliance import aliases as aliasesmod, auth, tls as tlsmod
    from appliance.couriers.local import LocalCourier
    from appliance.couriers.remote import RemoteCourier
    from appliance.directory import make_directory
    from appliance.queue import QueueService, Spool
    from appliance.store import make_store

    server_tls = tlsmod.ServerTLS(cfg.tls)
    try:
        aliases = aliasesmod.AliasResolver(cfg.aliases.file, cfg.appliance.domains) if cfg.aliases.file else None
    except aliasesmod.AliasesError as e:
        raise ConfigError(e.problems)
    top = ApplianceService(cfg, reactor, server_tls, aliases)

    pools = {name: ThreadPoolService(name, size) for name, size in (("disk", 4), ("queue", 2), ("auth", 2))}
    for pool_service in pools.values():
        pool_service.setServiceParent(top)

    directory = make_directory(cfg, reactor, pools["auth"].pool)
    store = make_store(cfg.storage, reactor, pools["disk"].pool)
    spool = Spool(_state_path(cfg, "queue"), reactor, pools["queue"].pool)
    couriers = {"local": LocalCourier(directory, store), "remote": RemoteCourier()}
    queue = QueueService(spool, couriers, cfg.queue, reactor, hostname=cfg.appliance.hostname,
                         is_local=lambda a: address.in_domains(a, cfg.appliance.domains))
    queue.setName("queue")
    queue.setServiceParent(top)

    common = _smtp_common(cfg, reactor, directory, aliases, queue, server_tls)
    for name, (kind, implicit) in SMTP_LISTENERS.items():
        description = getattr(cfg.listen, name)
        if description:
            factory = _smtp_factory(cfg, name, kind, implicit, common)
            _listen(top, reactor, name, description, tlsmod.implicit(factory, server_tls) if implicit else factory)
    return top


def _smtp_common(cfg: configmod.Config, reactor: Any, directory: Any, aliases: Any, queue: Any,
                 server_tls: Any) -> dict[str, Any]:
    from appliance import auth
    from appliance.smtp.delivery import Acceptor, RecipientResolver
    return {
        "resolver": RecipientResolver(directory, aliases, cfg.appliance.domains),
        "acceptor": Acceptor(queue, cfg.appliance.hostname),
        "directory": directory,
        "checker": auth.DirectoryChecker(directory),
        "throttle": auth.AuthThrottle(reactor),
        "clock": reactor,
        "tls": server_tls,
    }


def _smtp_factory(cfg: configmod.Config, name: str, kind: str, implicit: bool, common: dict[str, Any]) -> Any:
    from appliance.smtp.mx import MXPolicy
    from appliance.smtp.server import SMTPFactory
    from appliance.smtp.submission import SubmissionPolicy
    if kind == "mx":
        policy: Any = MXPolicy(common["resolver"], cfg.relay.trusted_networks)
    else:
        policy = SubmissionPolicy(name, common["resolver"], cfg.appliance.hostname)
    return SMTPFactory(policy=policy, acceptor=common["acceptor"], directory=common["directory"],
                       checker=common["checker"], throttle=common["throttle"], hostname=cfg.appliance.hostname,
                       domains=cfg.appliance.domains, limits=cfg.limits, tls=common["tls"], tls_settings=cfg.tls,
                       implicit_tls=implicit, clock=common["clock"])


def _listen(top: ApplianceService, reactor: Any, name: str, description: str, factory: Any) -> None:
    """A listener binds in privilegedStartService, before twistd drops to --uid/--gid."""
    listener = StreamServerEndpointService(endpoints.serverFromString(reactor, description), factory)
    listener._raiseSynchronously = True
    listener.setName(f"listen-{name}")
    listener.setServiceParent(top)


def _state_path(cfg: configmod.Config, *parts: str) -> str:
    import os
    return os.path.join(cfg.appliance.state_dir, *parts)
