"""Commit statuses, forge by forge, as each forge's API documents them.

* GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer`, JSON
  `state` (pending, success, failure, error), `target_url`, `description` (≤ 140), `context`.
* GitLab: `POST {api}/projects/{url-encoded path}/statuses/{sha}`, `PRIVATE-TOKEN`, JSON
  `state` (pending, running, success, failed, canceled), `name`, `target_url`, `description`.
* Gitea/Forgejo: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token`,
  JSON `state` (pending, success, error, failure, warning), `target_url`, `description`, `context`.
* Bitbucket Cloud: `POST {api}/repositories/{workspace}/{repo}/commit/{sha}/statuses/build`,
  `Authorization: Bearer`, JSON `key`, `state` (INPROGRESS, SUCCESSFUL, FAILED, STOPPED), `url`,
  `name`, `description`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from hyperdrive.headquarters.orders import Forge

PENDING, SUCCESS, FAILURE, CANCELED = "pending", "success", "failure", "canceled"
STATES = (PENDING, SUCCESS, FAILURE, CANCELED)
DESCRIPTION_MAX = 140  # GitHub's limit; the others take more, and a short line reads best

DEFAULT_API = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com/api/v4",
    "bitbucket": "https://api.bitbucket.org/2.0",
}
STATE_WORDS = {
    "github": {PENDING: "pending", SUCCESS: "success", FAILURE: "failure", CANCELED: "error"},
    "gitlab": {PENDING: "running", SUCCESS: "success", FAILURE: "failed", CANCELED: "canceled"},
    "gitea": {PENDING: "pending", SUCCESS: "success", FAILURE: "failure", CANCELED: "error"},
    "bitbucket": {
        PENDING: "INPROGRESS",
        SUCCESS: "SUCCESSFUL",
        FAILURE: "FAILED",
        CANCELED: "STOPPED",
    },
}


@dataclass(frozen=True)
class Status:
    """One commit status, said the same way for every forge."""

    sha: str
    state: str
    target_url: str
    description: str
    context: str


def status_request(forge: Forge, status: Status) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body that set `status` on `forge` (no credentials: see auth_headers)."""
    api = forge.api or DEFAULT_API[forge.kind]
    state = STATE_WORDS[forge.kind][status.state]
    text = _short(status.description)
    if forge.kind == "gitlab":
        project = urllib.parse.quote(forge.repo, safe="")
        body = {"state": state, "name": status.context, "target_url": status.target_url}
        return f"{api}/projects/{project}/statuses/{status.sha}", {**body, "description": text}
    if forge.kind == "bitbucket":
        url = f"{api}/repositories/{forge.repo}/commit/{status.sha}/statuses/build"
        body = {"key": status.context, "state": state, "url": status.target_url}
        return url, {**body, "name": status.context, "description": text}
    body = {"state": state, "target_url": status.target_url, "context": status.context}
    return f"{api}/repos/{forge.repo}/statuses/{status.sha}", {**body, "description": text}


def auth_headers(kind: str, token: str) -> dict[str, str]:
    """The headers that carry the token, as each forge's API asks for it."""
    if kind == "gitlab":
        return {"PRIVATE-TOKEN": token}
    if kind == "gitea":
        return {"Authorization": f"token {token}"}
    if kind == "github":
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    return {"Authorization": f"Bearer {token}"}


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= DESCRIPTION_MAX else line[: DESCRIPTION_MAX - 1] + "…"
