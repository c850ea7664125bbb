"""The orders in force: the last good headquarters plus the squadron-wide includes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hyperdrive.gitremote import shown_url
from hyperdrive.headquarters import Headquarters, Orders, merge_env, parse_orders
from hyperdrive.masking import Masker, secret_values
from hyperdrive.names import is_app_name
from hyperdrive.pipeline.previews import Preview, preview_orders


@functools.lru_cache(maxsize=1024)
def _default_orders(app: str, hull: str) -> Orders:
    """The orders of an app HQ does not name: the same every time, so parsed once per app
    (`hd status` asks for every app's)."""
    return parse_orders("", f"{app}/orders", app=app, default_hull=hull)


@dataclass
class Fleet:
    """What each app is ordered to be; apps pushed here without orders get the defaults."""

    default_hull: str
    hq: Headquarters | None = None
    hq_sha: str | None = None
    includes: dict[str, str] = field(default_factory=dict)
    previews: Callable[[str], Preview | None] = lambda name: None  # the records' (previews.py)
    domain: str = ""  # HYPERDRIVE_DOMAIN: a preview is also `<slug>.<app>.<domain>`
    # the mask and the (hq, includes) it was built from: rebuilt when either is replaced
    _masker: tuple[Masker, object, object] = field(
        default=(Masker(), None, None), init=False, repr=False, compare=False
    )

    def orders(self, app: str) -> Orders:
        """The app's orders, or default orders for an app hosted here that HQ does not name."""
        if self.hq is not None and app in self.hq.apps:
            return self.hq.apps[app]
        if (preview := self.previews(app)) is not None:
            return preview_orders(self.orders(preview.app), preview, self.domain)
        return _default_orders(app, self.default_hull)

    def repo(self, app: str) -> str:
        """The git repo an app's commits come from: a preview's is its app's."""
        preview = self.previews(app)
        return preview.app if preview is not None and not self.ordered(app) else app

    def ordered(self, app: str) -> bool:
        return self.hq is not None and app in self.hq.apps

    def rejected(self, app: str) -> str | None:
        if self.hq is None or app not in self.hq.rejected:
            return None
        return str(self.hq.rejected[app])

    def env(self, app: str) -> dict[str, str]:
        """includes under the orders' env (orders win); PORT always set."""
        return merge_env(self.includes, self.orders(app).env)

    def secrets(self, app: str) -> set[str]:
        """The values masked for `app`: its includes and the secret-looking or `secret`-named
        values of its env."""
        return secret_values(self.env(app), self.includes, self.orders(app).secrets)

    @property
    def masker(self) -> Masker:
        """One mask for the whole squadron (every app's secrets), so any event is covered,
        whichever app it names or none; built once per HQ or includes change."""
        masker, hq, includes = self._masker
        if hq is not self.hq or includes is not self.includes:
            apps = self.hq.apps.values() if self.hq else ()
            values = secret_values({}, self.includes).union(
                *(secret_values(o.env, {}, o.secrets) for o in apps)
            )
            masker = Masker.of(values)
            self._masker = (masker, self.hq, self.includes)
        return masker

    def mask(self, text: str) -> str:
        """`text` with every secret of the squadron masked (the event log's last step)."""
        return self.masker(text)

    def hulls(self) -> set[str]:
        """The hull kinds in use by default or by name in some app's orders."""
        ordered = {o.hull for o in self.hq.apps.values() if o.hull} if self.hq else set()
        return {self.default_hull, *ordered}

    def names(self) -> list[str]:
        """Every app HQ names: ordered ones and those whose orders were rejected."""
        if self.hq is None:
            return []
        return sorted(set(self.hq.apps) | {a for a in self.hq.rejected if is_app_name(a)})

    def summary(self, app: str) -> Mapping[str, str]:
        """What `hd status` shows: the orders in force, and a rejection when there is one."""
        rejected = self.rejected(app)
        if rejected and not self.ordered(app):
            return {"orders": f"REJECTED, not deployed: {rejected}", "rejected": rejected}
        orders = self.orders(app)
        source = shown_url(orders.autodeploy_url) if orders.autodeploy_url else "hosted here"
        if orders.branch:
            source += f"#{orders.branch}" if orders.autodeploy_url else f", branch {orders.branch}"
        line = f"{source}, PORT {orders.port}, hull {orders.hull}"
        if rejected:
            return {"orders": f"{line}; new orders REJECTED: {rejected}", "rejected": rejected}
        return {"orders": line}
