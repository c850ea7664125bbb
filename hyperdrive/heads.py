"""A repo's default branch after a push (GitHub's rule), for git's hooks: no event loop here,
so a post-receive hook writes its trigger without loading asyncio (hyperdrive.repos does)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hyperdrive.names import ZERO_SHA

DEFAULT_BRANCH = "main"  # what HEAD of a repo made here names until a push writes a branch


def head_branch(path: Path) -> str:
    """The branch a repo's HEAD names, which may not exist yet."""
    try:
        head = (path / "HEAD").read_text().strip()
    except OSError:
        return DEFAULT_BRANCH
    prefix = "ref: refs/heads/"
    return head[len(prefix) :] if head.startswith(prefix) else DEFAULT_BRANCH


def branch_after_push(head: str, head_exists: bool, updates: Iterable[tuple[str, str]]) -> str:
    """GitHub's rule for a repo's default branch: HEAD's branch while it exists, else the
    first branch a push writes (so a first push of `main` or `master` is what deploys).

    `updates` are (ref, new sha) in the order git reports them; `head_exists` is whether
    HEAD's branch exists once the push has landed.
    """
    if head_exists:
        return head
    for ref, new in updates:
        if ref.startswith("refs/heads/") and new != ZERO_SHA:
            return ref.removeprefix("refs/heads/")
    return head


def _pushed_head(path: Path, updates: list[tuple[str, str]]) -> bool:
    """This push wrote HEAD's branch (not deleted it) in a repo git can open: it exists."""
    head = f"refs/heads/{head_branch(path)}"
    wrote = [new for ref, new in updates if ref == head]
    return bool(wrote) and wrote[-1].strip("0") != "" and (path / "objects").is_dir()


def adopt_pushed_branch(path: Path, updates: Iterable[tuple[str, str]]) -> str | None:
    """After a push landed: point HEAD at the branch `branch_after_push` names; that branch,
    or None when `path` is not a bare repo."""
    updates = list(updates)
    if not (path / "HEAD").is_file():
        return None
    if _pushed_head(path, updates):  # the common push: nothing to adopt, no dulwich (~30 ms)
        return head_branch(path)
    from dulwich.errors import NotGitRepository  # noqa: PLC0415 - as in repos.resolve_ref
    from dulwich.refs import Ref  # noqa: PLC0415 - as in repos.resolve_ref
    from dulwich.repo import Repo  # noqa: PLC0415 - as in repos.resolve_ref

    try:
        repo = Repo(str(path))
    except NotGitRepository:
        return None
    with repo:
        head = head_branch(path)
        exists = Ref(f"refs/heads/{head}".encode()) in repo.refs
        branch = branch_after_push(head, exists, updates)
        if branch != head:
            repo.refs.set_symbolic_ref(Ref(b"HEAD"), Ref(f"refs/heads/{branch}".encode()))
        return branch
