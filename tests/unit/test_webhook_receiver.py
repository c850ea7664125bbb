"""The webhook receiver's parts that need no HTTP: its event classes, and its resolver."""

from dataclasses import dataclass

from hyperdrive.headquarters import Headquarters, parse_orders
from hyperdrive.hooks.webhook import FleetResolver, Resolution
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.fleet import Fleet
from hyperdrive.pipeline.hqsync import Source

SHA = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"


def test_webhook_events_keep_the_names_and_fields_of_the_event_log() -> None:
    received = ev.WebhookReceived(
        provider="github", delivery="github:d-1", app="web", sha=SHA, deploy="github:d-1:web",
        message="refs/heads/main of octo-org/web pushed",
    )  # fmt: skip
    assert received.record() == {
        "event": "WebhookReceived",
        "app": "web",
        "sha": SHA,
        "deploy": "github:d-1:web",
        "message": "refs/heads/main of octo-org/web pushed",
        "provider": "github",
        "delivery": "github:d-1",
    }
    rejected = ev.WebhookRejected(provider="gitlab", message="X-Gitlab-Token is not our secret")
    assert rejected.record() == {
        "event": "WebhookRejected",
        "message": "X-Gitlab-Token is not our secret",
        "provider": "gitlab",
        "status": 400,
    }
    clash = ev.WebhookRejected(provider="github", delivery="github:d-1", message="m", status=409)
    assert (clash.record()["status"], clash.record()["delivery"]) == (409, "github:d-1")


def test_every_fate_of_a_delivery_is_an_event_class() -> None:
    fates = [ev.WebhookReceived, ev.WebhookRedelivered, ev.WebhookIgnored, ev.WebhookPinged]
    for cls in [*fates, ev.WebhookRejected]:
        event = cls(provider="gitea", delivery="gitea:g-1", message="why")
        assert issubclass(cls, ev.WebhookEvent)
        assert event.record()["event"] == cls.__name__
        assert {"provider": "gitea", "delivery": "gitea:g-1"}.items() <= event.record().items()


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
