"""The webhook receiver's parts that need no HTTP: its resolver reads the fleet in force."""

from dataclasses import dataclass

from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.hooks.webhook import FleetResolver, Resolution
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.hqsync import Source


@dataclass
class Headquarter:
    """What FleetResolver needs of HeadquartersSync: where HQ comes from now."""

    source: Source


def orders(app: str, text: str) -> Headquarters:
    return Headquarters(apps={app: parse_orders(text, f"{app}/orders", default_hull="busybox")})


def test_the_fleet_resolver_follows_the_orders_and_the_hq_source_in_force() -> None:
    fleet = Fleet("busybox", hq=orders("web", "autodeploy https://github.com/acme/web.git\n"))
    hq = Headquarter(Source("https://github.com/acme/hq.git", "main"))
    resolver = FleetResolver(fleet, hq)
    urls = ["https://github.com/acme/web"]
    assert resolver.resolve(urls, "refs/heads/master", "master") == Resolution(apps=("web",))
    hq_urls = ["git@github.com:acme/hq.git"]
    assert resolver.resolve(hq_urls, "refs/heads/main", "master") == Resolution(hq=True)
    assert not resolver.resolve(hq_urls, "refs/heads/master", "master").hq, "HQ follows main"
    fleet.hq = orders("api", "autodeploy https://github.com/acme/web.git#develop\n")
    assert resolver.resolve(urls, "refs/heads/develop", "master") == Resolution(apps=("api",))
    hq.source = Source("", None)  # `hd headquarters set ''`: hosted here from now on
    assert resolver.resolve(hq_urls, "refs/heads/main", "master").reason
