"""The composition root: the one place where adapters (real ones, or the fakes beside the
Protocols in pipeline/ports.py) are wired into the deploy core, the bus and the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperdrive import systemd
from hyperdrive.access import Refusals
from hyperdrive.accesslog import RequestStream
from hyperdrive.acme_client import AcmeIssuer
from hyperdrive.admiral import AdmiralCommands
from hyperdrive.api import Api, TokenStore
from hyperdrive.certs import CertStore
from hyperdrive.config import Config
from hyperdrive.eventlog import EventLog, JsonlEventLog
from hyperdrive.fleet.service import FleetService, fleet_routes
from hyperdrive.gitserver import GitServer, hook_env, package_hooks
from hyperdrive.healing import NginxWatch, ShipWatch, TableWatch
from hyperdrive.hooks.deliveries import Deliveries
from hyperdrive.hooks.webhook import FleetResolver, WebhookReceiver
from hyperdrive.https import CertificateKeeper
from hyperdrive.hull_builder import LxcHullBuilder
from hyperdrive.idmap import for_ships
from hyperdrive.keyring import KeyRing, bootstrap_keyring
from hyperdrive.lxc_async import Lxc
from hyperdrive.network import IpAllocator, ShipNetwork, bridge_address
from hyperdrive.nginx_reload import Nginx, Routes
from hyperdrive.outbound.courier import Courier, Links
from hyperdrive.outbound.journal import DeliveryJournal
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.build import Builder
from hyperdrive.pipeline.bus import CommandHandler, EventHandler, MessageBus
from hyperdrive.pipeline.commands import (
    Assemble,
    AssembleHulls,
    Command,
    Deploy,
    Launch,
    Retire,
    Rollback,
    SyncHeadquarters,
)
from hyperdrive.pipeline.conductor import Conductor
from hyperdrive.pipeline.deploy import Deployer
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.golive import GoLive, RouteTable
from hyperdrive.pipeline.guard import AfterSwap
from hyperdrive.pipeline.handlers import Handlers
from hyperdrive.pipeline.health import HttpProbe
from hyperdrive.pipeline.hqsync import HeadquartersSync
from hyperdrive.pipeline.hulls import Hulls
from hyperdrive.pipeline.inbox import Inbox
from hyperdrive.pipeline.model import Records
from hyperdrive.pipeline.oneoff import OneOff
from hyperdrive.pipeline.plan import Planner
from hyperdrive.pipeline.ports import (
    Clock,
    ContainerRuntime,
    Git,
    HullBuilder,
    Network,
    Probe,
    Proxy,
    Requests,
    SystemClock,
)
from hyperdrive.pipeline.previews import Previews, previewed
from hyperdrive.pipeline.recovery import Recovery
from hyperdrive.pipeline.revival import Revival
from hyperdrive.pipeline.rollout import Rollouts
from hyperdrive.pipeline.ships import Ships
from hyperdrive.pipeline.start import Starter
from hyperdrive.procview import ProcessView
from hyperdrive.proxy import NginxProxy
from hyperdrive.repos import GitRepos
from hyperdrive.shipdns import ShipDns, app_names
from hyperdrive.spool import FileSpool
from hyperdrive.status import app_rows, squadron_status
from hyperdrive.traffic import StablePorts, Traffic
from hyperdrive.triggers import Trigger
from hyperdrive.web.routes import Dashboard, Sources
from hyperdrive.web.sessions import Sessions


@dataclass
class Adapters:
    """What the deploy core drives; `bootstrap.build` fills in the real one for each None."""

    runtime: ContainerRuntime
    hull_builder: HullBuilder
    git: Git
    proxy: Proxy
    network: Network
    probe: Probe
    clock: Clock
    requests: Requests


@dataclass
class Core:
    """The deploy core: the records, the stages and the command handlers over them."""

    records: Records
    fleet: Fleet
    hulls: Hulls
    ships: Ships
    routes: RouteTable
    planner: Planner
    deployer: Deployer
    handlers: Handlers
    adapters: Adapters


Watch = Callable[[asyncio.Event], Coroutine[Any, Any, None]]  # runs until the event is set


@dataclass
class Daemon:
    """Everything `hd serve` runs, built but not started (server.py starts and stops it)."""

    config: Config
    eventlog: JsonlEventLog
    spool: FileSpool
    bus: MessageBus
    inbox: Inbox
    api: Api
    core: Core
    recovery: Recovery
    headquarters: HeadquartersSync
    gitserver: GitServer
    keyring: KeyRing
    dns: ShipDns
    courier: Courier
    fleet: FleetService
    conductor: Conductor
    keeper: CertificateKeeper | None = None
    # what breaks around the daemon, each noticed by a watch and put right (healing.py)
    watches: dict[str, Watch] = field(default_factory=dict)


def nginx_for(config: Config) -> Nginx:
    """Our nginx master; under systemd in its own scope, so it outlives the service's restart."""
    scope = f"{config.name}-nginx" if systemd.booted() else None
    return Nginx(config.nginx_dir, scope=scope)


def real_adapters(
    config: Config,
    *,
    runtime: ContainerRuntime | None = None,
    hull_builder: HullBuilder | None = None,
    git: Git | None = None,
    proxy: Proxy | None = None,
    network: Network | None = None,
    probe: Probe | None = None,
    clock: Clock | None = None,
    dns: ShipDns | None = None,
    requests: Requests | None = None,
    keeper: CertificateKeeper | None = None,
) -> Adapters:
    """The given adapters, and the real one (LXC, git, nginx + nftables, …) for each missing."""
    if runtime is None or hull_builder is None:
        lxc = Lxc(config.containers_dir, config.lxc_logs_dir, ids=for_ships())
        runtime = runtime or lxc
        hull_builder = hull_builder or LxcHullBuilder(
            lxc, config.ships_dir, mirror=config.apt_mirror
        )
    address = str(bridge_address(config.subnet))
    # one nft table: the proxy's traffic map and the ships' firewall
    traffic = Traffic(
        config.name,
        f"{address}/{config.subnet.prefixlen}",
        device=config.bridge,
        egress=config.ship_egress,
    )
    if proxy is None:
        routes = Routes(nginx_for(config), http_port=config.http_port, domain=config.domain)
        ports = StablePorts(config.ports_record)
        proxy = NginxProxy(
            routes, traffic, ports, address, keeper=keeper, https_port=config.https_port
        )
    if network is None:
        ips = IpAllocator(config.ips_record, config.subnet)
        hooks, resolve = ([dns.bind], dns.addresses) if dns is not None else ([], None)
        network = ShipNetwork(
            config.name, config.subnet, ips, firewall=traffic, on_up=hooks, resolve=resolve
        )
    return Adapters(
        runtime=runtime,
        hull_builder=hull_builder,
        git=git or GitRepos(config.git_dir, config.private_keys_dir, config.known_hosts_file),
        proxy=proxy,
        network=network,
        probe=probe or HttpProbe(),
        clock=clock or SystemClock(),
        requests=requests or RequestStream(config.requests_socket),
    )


def certificate_keeper(config: Config) -> CertificateKeeper:
    """The apps' (and the API's) certificates: ACME unless HYPERDRIVE_ACME_DIRECTORY is empty."""
    store = CertStore(config.certs_dir)
    issuer = None
    if config.acme_directory:
        issuer = AcmeIssuer(store, config.acme_directory, config.acme_email, config.acme_ca)
    extra = (config.api_name,) if config.api_name else ()
    return CertificateKeeper(
        store,
        issuer,
        emit=lambda event: None,
        retry_s=config.acme_retry_seconds,
        extra=extra,
        https_port=config.https_port,
    )


def deploy_core(config: Config, adapters: Adapters, fleet: Fleet | None = None) -> Core:
    """The stages of a deploy over the adapters, and the handlers of every app command."""
    a = adapters
    records, fleet = Records(config.apps_records_dir), fleet or Fleet(config.hull)
    fleet.previews, fleet.domain = (lambda name: previewed(records, name)), config.domain
    hulls = Hulls(config.name, a.runtime, a.hull_builder, config.hulls_record)
    ships = Ships(
        config=config,
        runtime=a.runtime,
        network=a.network,
        records=records,
        hulls=hulls,
        clock=a.clock,
    )
    routes = RouteTable(records, fleet, a.proxy)
    planner = Planner(a.git, fleet)
    builder = Builder(
        config=config,
        runtime=a.runtime,
        git=a.git,
        network=a.network,
        proxy=a.proxy,
        hulls=hulls,
        fleet=fleet,
    )
    starter = Starter(
        config=config, runtime=a.runtime, network=a.network, probe=a.probe, records=records
    )
    after = AfterSwap(
        config=config,
        runtime=a.runtime,
        proxy=a.proxy,
        probe=a.probe,
        requests=a.requests,
        ships=ships,
        clock=a.clock,
    )
    golive = GoLive(
        config=config,
        runtime=a.runtime,
        proxy=a.proxy,
        probe=a.probe,
        routes=routes,
        ships=ships,
        starter=starter,
        clock=a.clock,
        after=after,
    )
    deployer = Deployer(
        records=records,
        fleet=fleet,
        clock=a.clock,
        planner=planner,
        builder=builder,
        starter=starter,
        golive=golive,
        ships=ships,
    )
    handlers = Handlers(
        deployer=deployer, routes=routes, proxy=a.proxy, runtime=a.runtime, hulls=hulls
    )
    return Core(records, fleet, hulls, ships, routes, planner, deployer, handlers, a)


def command_handlers(
    core: Core, headquarters: HeadquartersSync, rollouts: Rollouts | None = None
) -> dict[type[Command], CommandHandler]:
    """The command table: each command type to exactly one handler (a Deploy through the
    fleet's rollout gate when there is one)."""
    h = core.handlers
    return {
        Deploy: rollouts.handle if rollouts is not None else core.deployer.deploy,
        Retire: h.retire,
        Rollback: h.rollback,
        Assemble: h.assemble,
        AssembleHulls: h.assemble_hulls,
        Launch: h.launch,
        SyncHeadquarters: headquarters.sync,
    }


def event_handlers(
    courier: Courier | None = None, conductor: Conductor | None = None
) -> dict[type[ev.Event], list[EventHandler]]:
    """The event table: facts to the listeners that react to them."""
    table: dict[type[ev.Event], list[EventHandler]] = {}
    if courier is not None:
        outcomes = (ev.DeployQueued, ev.DeployFinished, ev.DeployFailed, ev.DeploySuperseded)
        for kind in outcomes:
            table.setdefault(kind, []).append(courier.on_event)
    if conductor is not None:  # after these another ship may be live, or none
        changes: tuple[type[ev.Event], ...] = (
            ev.DeployFinished,
            ev.DeployFailed,
            ev.RolledBack,
            ev.AppRetired,
        )
        for change in changes:
            table.setdefault(change, []).append(conductor.on_event)
    return table


def _courier(config: Config, core: Core) -> Courier:
    """Commit statuses and notify POSTs for each deploy's outcome (hyperdrive/outbound)."""
    fleet = core.fleet

    def owner(app: str) -> str:
        preview = fleet.previews(app)
        return preview.app if preview is not None else app

    return Courier(
        journal=DeliveryJournal(config.data / "outbound" / "deliveries.jsonl"),
        private_keys=config.private_keys_dir,
        orders=fleet.orders,
        owner=owner,
        mask=fleet.mask,
        links=Links(config.domain, config.http_port, config.api_listen.port),
        clock=core.adapters.clock,
        emit=lambda event: None,  # the bus's, once it is made
        followed=core.planner.branch,
    )


def build(
    config: Config,
    *,
    runtime: ContainerRuntime | None = None,
    git: Git | None = None,
    proxy: Proxy | None = None,
    clock: Clock | None = None,
    network: Network | None = None,
    probe: Probe | None = None,
    hull_builder: HullBuilder | None = None,
    requests: Requests | None = None,
) -> Daemon:
    """The whole daemon, wired; each adapter not given is the real one."""
    # the orders in force; their secrets are masked in every event (hyperdrive/masking.py)
    orders = Fleet(config.hull)
    eventlog = JsonlEventLog(
        config.events_file, max_bytes=config.eventlog_max_bytes, mask=orders.mask
    )

    def rejected(name: str, why: str) -> None:
        event = ev.TriggerRejected(file=name, message=f"spool/rejected/{name}: {why}")
        eventlog.append(event.record())

    spool = FileSpool(config.spool_dir, on_rejected=rejected)
    fleet = FleetService(config, spool)
    dns = ShipDns(str(bridge_address(config.subnet)), lambda: (), config.ship_dns)
    keeper = certificate_keeper(config) if proxy is None else None
    adapters = real_adapters(
        config,
        runtime=runtime,
        hull_builder=hull_builder,
        git=git,
        proxy=proxy,
        network=network,
        probe=probe,
        clock=clock,
        dns=dns,
        requests=requests,
        keeper=keeper,
    )
    core = deploy_core(config, adapters, orders)
    dns.names = lambda: served_names(config, core)
    fleet.app_rows = lambda: app_rows(config, core.records, core.fleet)  # `hd fleet status`
    fleet.events = eventlog  # every event, tagged, into the fleet's HD_EVENTS
    keyring = bootstrap_keyring(config.admiral_keys)
    headquarters = _headquarters(config, core, keyring, spool)
    courier = _courier(config, core)
    conductor = Conductor(config, core.records, adapters.runtime, lambda event: None)
    rollouts = Rollouts(core.deployer.deploy, core.fleet.orders, board=fleet.board)
    bus = MessageBus(
        command_handlers(core, headquarters, rollouts),
        event_handlers(courier, conductor),
        eventlog,
        parallel=config.parallel_deploys,
    )
    courier.emit = conductor.emit = bus.emit
    if keeper is not None:
        keeper.emit = bus.emit
    inbox = Inbox(spool, bus, owner=core.ships.owner, route=_previews(core, bus).route)
    recovery = Recovery(
        name=config.name,
        records=core.records,
        runtime=adapters.runtime,
        network=adapters.network,
        fleet=core.fleet,
        proxy=adapters.proxy,
        routes=core.routes,
        ships=core.ships,
        starter=core.deployer.starter,
        out=bus,
    )
    status = _status(config, core, headquarters, spool, bus, fleet, keeper)
    view = _process_view(config, core, conductor)
    api = _api(
        config=config,
        core=core,
        hq=headquarters,
        eventlog=eventlog,
        spool=spool,
        bus=bus,
        inbox=inbox,
        status=status,
        fleet=fleet,
        view=view,
    )
    gitserver = _gitserver(config, keyring, eventlog, spool, status, view)
    return Daemon(
        config,
        eventlog,
        spool,
        bus,
        inbox,
        api,
        core,
        recovery,
        headquarters,
        gitserver,
        keyring,
        dns,
        courier,
        fleet,
        conductor,
        keeper,
        _watches(core, bus, recovery, spool),
    )


def _process_view(config: Config, core: Core, conductor: Conductor) -> ProcessView:
    """`hd ps`, `hd logs --app` and `hd run` (a one-off ship made from the live one)."""
    adapters = core.adapters
    oneoff = OneOff(
        config=config,
        records=core.records,
        runtime=adapters.runtime,
        network=adapters.network,
        builder=core.deployer.builder,
        fleet=core.fleet,
    )
    return ProcessView(config, core.records, conductor, run=oneoff.run, oneoff=oneoff)


def _watches(core: Core, bus: MessageBus, recovery: Recovery, spool: FileSpool) -> dict[str, Watch]:
    """The self-healing watches over the real programs (fakes need none)."""
    found: dict[str, Watch] = {}
    adapters = core.adapters
    if isinstance(adapters.runtime, Lxc):

        async def rollback(app: str) -> None:
            await spool.put(Trigger.rollback(app, "hyperdrive"))

        revival = Revival(
            records=core.records,
            runtime=adapters.runtime,
            starter=core.deployer.starter,
            out=bus,
            rollback=rollback,
        )
        found["ship watch"] = ShipWatch(revival, adapters.runtime.states).run
    if isinstance(adapters.proxy, NginxProxy):
        found["nginx watch"] = NginxWatch(adapters.proxy.routes, bus).run
        table = TableWatch(adapters.proxy, recovery, bus)
        adapters.proxy.on_lost = table.heal  # a swap that finds the table gone heals it first
        found["nft table watch"] = table.run
    return found


def _previews(core: Core, bus: MessageBus) -> Previews:
    """Another branch's push, to its preview (when the app's orders say `previews on`)."""
    fleet = core.fleet
    return Previews(
        records=core.records,
        orders=fleet.orders,
        taken=lambda name: name in fleet.names(),
        branch=core.planner.branch,
        emit=bus.emit,
        clock=core.adapters.clock.time,
        handle=bus.handle,
    )


def served_names(config: Config, core: Core) -> set[str]:
    """What the ships' DNS answers with the bridge: the apps' servernames and `<app>.<domain>`."""
    apps = set(core.fleet.names()) | {app.name for app in core.records.all()}
    return app_names(((a, core.fleet.orders(a).servernames) for a in apps), config.domain)


Status = Callable[[], dict[str, Any]]


def _status(  # noqa: PLR0917 - the five parts it reads, the fleet and the certificates
    config: Config,
    core: Core,
    hq: HeadquartersSync,
    spool: FileSpool,
    bus: MessageBus,
    fleet: FleetService,
    keeper: CertificateKeeper | None = None,
) -> Status:
    def status() -> dict[str, Any]:
        counts = {
            "admirals": hq.keyring.count(),
            "captains": hq.keyring.captain_count(),
            "pending": spool.pending_count(),
            "inflight": bus.inflight,
        }
        return squadron_status(
            config=config,
            records=core.records,
            fleet=core.fleet,
            hulls=core.hulls,
            headquarters=hq.source.url,
            counts=counts,
            certificates=keeper.status() if keeper is not None else [],
        ) | {"fleet": fleet.status()}

    return status


def _headquarters(
    config: Config, core: Core, keyring: KeyRing, spool: FileSpool
) -> HeadquartersSync:
    git = core.adapters.git

    async def has_commits(app: str) -> bool:
        branch = await core.planner.branch(app, core.fleet.orders(app))
        return await git.resolve(app, branch) is not None

    def running() -> list[str]:
        return [app.name for app in core.records.all() if app.live_ship is not None]

    return HeadquartersSync(config, core.fleet, keyring, spool, has_commits, running=running)


def _api(
    *,
    config: Config,
    core: Core,
    hq: HeadquartersSync,
    eventlog: EventLog,
    spool: FileSpool,
    bus: MessageBus,
    inbox: Inbox,
    status: Status,
    fleet: FleetService,
    view: ProcessView,
) -> Api:
    deliveries = Deliveries()  # what each webhook delivery was answered, for the dashboard
    webhooks = WebhookReceiver(
        config.webhook_secret,
        spool,
        FleetResolver(core.fleet, hq),
        eventlog.append,
        deliveries=deliveries,
    )
    tokens = TokenStore(config.tokens_file)
    sources = Sources(
        eventlog, spool, status, core.records, core.fleet, config.ships_dir, config.git_dir
    )
    dashboard = Dashboard(sources, Sessions(tokens), deliveries)

    def metrics() -> Mapping[str, float]:
        return {
            "deploys_inflight": bus.inflight,
            "triggers_handed_over": inbox.handed_over,
            "webhook_refusals": webhooks.refusals.refused,
            "webhook_refusals_summarised": webhooks.refusals.unwritten,
            "dashboard_sign_ins_refused": dashboard.refusals.tally.refused,
            "dashboard_sessions": len(dashboard.sessions),
            "webhook_slow_bodies": webhooks.slow_bodies,
        }

    stream = core.adapters.requests
    return Api(
        eventlog,
        spool,
        status,
        tokens,
        metrics,
        set_headquarters=hq.set_source,
        public_routes=[webhooks.add_routes, dashboard.add_routes],
        admin_routes=[fleet_routes(fleet), view.add_routes],
        fleet_events=fleet.fleet_events,
        traffic=lambda: stream.apps if isinstance(stream, RequestStream) else {},
    )


def _gitserver(  # noqa: PLR0917 - what the SSH commands read
    config: Config,
    keyring: KeyRing,
    eventlog: EventLog,
    spool: FileSpool,
    status: Status,
    view: ProcessView,
) -> GitServer:
    refusals = Refusals(eventlog.append)  # one tally for git and commands alike
    admiral = AdmiralCommands(eventlog, spool, status, config.containers_dir, refusals, view=view)
    listen = config.ssh_listen
    return GitServer(
        listen.host,
        listen.port,
        config.host_key_file,
        config.git_dir,
        keyring,
        hook_env(config),
        admiral,
        package_hooks(),
        refusals=refusals,
    )
