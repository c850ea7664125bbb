"""Git over SSH: Hyperdrive's asyncssh server beside OpenSSH sshd + git-shell, in one run.

Run (as root): .venv/bin/python bench/git_ssh.py [--files 2000] [--mb 50] [--pairs 6]
  [--minutes 8] [--profile FILE]  (FILE: a cProfile of Hyperdrive's server process, top printed)

Both servers listen on 127.0.0.1 (free ports), serve the same kind of bare repo (made by
hyperdrive.gitserver.create_repo, so both run the same post-receive hook, which writes its
spool trigger; pushes say `-o nowait`: no daemon here), and the client forces the same key
exchange and cipher on both (printed, and checked in `ssh -v` output). sshd runs from its own
config: its own host key, AuthorizedKeysFile = a temp file, ForceCommand git-shell.
Measured: connection setup (`git ls-remote`, the same op on both), first push of a generated
repo (random, incompressible files), one-file push, full clone, 10 concurrent pushes (10
repos), 10 concurrent clones. Then: every clone has the pushed commit and passes fsck.

Every operation runs in pairs (one run on each server, alternating which goes first), at least
--pairs of them, and goes on while the median of the paired ratios has a 95 % confidence
interval wider than ±5 %, within its share of --minutes (WEIGHTS; what a row leaves goes to
the rows after it); a row that does not get there within its share stops (after at least 2
pairs) and says so, so the whole run stays within about --minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import math
import os
import pstats
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TREE = os.environ.get("HD_BENCH_TREE") or str(ROOT)  # whose hyperdrive (bench/git_ab.py)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, TREE)

from hyperdrive.config import Config  # noqa: E402
from hyperdrive.gitserver import GitServer, create_repo, package_hooks  # noqa: E402
from hyperdrive.keyring import KeyRing  # noqa: E402
from hyperdrive.server import loop_factory  # noqa: E402
from tests.conftest import free_port  # noqa: E402

KEX = "curve25519-sha256"
CIPHER = "aes128-gcm@openssh.com"
HOSTKEY = "ssh-ed25519"
TIMEOUT = 300
GOALS = {"connection setup": 0.5, "one-file push": 0.5}
NAMES = ("warm", "main")  # the repos every run shares


def sh(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a program; fail with its own output."""
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stdout!r} {done.stderr!r}")
    return done.stdout.decode()


class Side:
    """One server under test: how to reach a repo on it, and the env git needs."""

    def __init__(self, name: str, key: Path, port: int, user: str, prefix: str) -> None:
        self.name, self.port, self.user, self.prefix = name, port, user, prefix
        ssh = [
            "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", f"KexAlgorithms={KEX}",
            "-o", f"Ciphers={CIPHER}", "-o", f"HostKeyAlgorithms={HOSTKEY}",
            "-o", "Compression=no",
        ]  # fmt: skip
        self.env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "GIT_SSH_COMMAND": shlex.join(ssh), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@example.invalid", "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@example.invalid",
        }  # fmt: skip

    def url(self, repo: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.prefix}{repo}.git"

    def negotiated(self) -> str:
        """What `ssh -v` says was agreed, from a real `git ls-remote`."""
        env = {**self.env, "GIT_SSH_COMMAND": self.env["GIT_SSH_COMMAND"] + " -v"}
        done = subprocess.run(
            ["git", "ls-remote", self.url("warm")], env=env, capture_output=True,
            timeout=60, check=True,
        )  # fmt: skip
        lines = done.stderr.decode().splitlines()
        kex = [ln.split("kex: algorithm: ")[1] for ln in lines if "kex: algorithm: " in ln]
        cipher = [
            ln.split("cipher: ")[1].split()[0] for ln in lines if "server->client cipher" in ln
        ]
        return f"kex {kex[0] if kex else '?'}, cipher {cipher[0] if cipher else '?'}"


# -- the servers ---------------------------------------------------------------------------


def serve_hyperdrive(work: Path, pub: Path) -> None:
    """Child process: run GitServer until stdin closes; print the port first."""

    async def main() -> None:
        keyring = KeyRing()
        keyring.add_bootstrap(pub.read_text().splitlines())
        env = {"HYPERDRIVE_SPOOL": str(work / "spool-hd")}
        server = GitServer("127.0.0.1", 0, work / "hd_host_key", work / "hd", keyring, env, None)
        await server.start()
        print(server.bound_port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.close()

    profile = os.environ.get("HD_BENCH_PROFILE")
    if not profile:
        on_daemon_loop(main())
        return
    profiler = cProfile.Profile()
    profiler.runcall(on_daemon_loop, main())
    profiler.dump_stats(profile)


def on_daemon_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on the event loop `hd serve` would run on (HYPERDRIVE_EVENT_LOOP)."""
    name = os.environ.get("HYPERDRIVE_EVENT_LOOP") or Config().event_loop
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        runner.run(main)


def print_profile(path: Path) -> None:
    """Where the server's own time went: the top functions by their own time."""
    stats = pstats.Stats(str(path))
    print(f"\nHyperdrive server profile ({path}), top 15 by own time:")
    stats.sort_stats("tottime").print_stats(15)


def start_hyperdrive(
    work: Path, pub: Path, profile: Path | None, tree: Path = ROOT
) -> tuple[subprocess.Popen[str], int]:
    """The server (of `tree`'s hyperdrive package) in a child process: (process, port)."""
    env = {**os.environ, "HD_BENCH_PROFILE": str(profile or ""), "HD_BENCH_TREE": str(tree)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(work), str(pub)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


SSHD_CONFIG = """\
ListenAddress 127.0.0.1
HostKey {work}/sshd_host_ed25519
PidFile {work}/sshd.pid
AuthorizedKeysFile {work}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
KexAlgorithms {kex}
Ciphers {cipher}
HostKeyAlgorithms {hostkey}
AcceptEnv GIT_PROTOCOL
SetEnv HYPERDRIVE_SPOOL={work}/spool-sshd HYPERDRIVE_PYTHON={python}
ForceCommand git-shell -c "$SSH_ORIGINAL_COMMAND"
"""


def start_sshd(work: Path, pub: Path) -> tuple[subprocess.Popen[bytes], int]:
    """OpenSSH sshd from its own config, as root, on a free loopback port."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "sshd_host_ed25519")
    (work / "authorized_keys").write_text(pub.read_text())
    config = work / "sshd_config"
    config.write_text(
        SSHD_CONFIG.format(
            work=work, kex=KEX, cipher=CIPHER, hostkey=HOSTKEY, python=sys.executable
        )
    )
    port = free_port()
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-p", str(port)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return proc, port
        time.sleep(0.05)
    raise SystemExit("sshd did not start")


# -- the workload ----------------------------------------------------------------------------


def source_repo(path: Path, files: int, megabytes: int, env: dict[str, str]) -> None:
    """`files` random (incompressible) files, `megabytes` in all, one commit on master."""
    size = megabytes * 1024 * 1024 // files
    sh("git", "init", "-q", "-b", "master", path, env=env)
    for n in range(files):
        folder = path / f"d{n % 40:02d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{n:05d}.bin").write_bytes(os.urandom(size))
    sh("git", "add", "-A", cwd=path, env=env)
    sh("git", "commit", "-q", "-m", "generated", cwd=path, env=env)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def push(side: Side, tree: Path, repo: str) -> None:
    sh("git", "push", "-q", "-o", "nowait", side.url(repo), "master", cwd=tree, env=side.env)


def clone(side: Side, repo: str, into: Path) -> None:
    sh("git", "clone", "-q", "--no-checkout", side.url(repo), into, env=side.env)


def in_parallel(actions: Sequence[Callable[[], object]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(actions)) as pool:
        for future in [pool.submit(a) for a in actions]:
            future.result()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


TARGET = 0.05  # the ratio's 95 % confidence interval must lie within ±5 % of it
MIN_PAIRS = 6  # the fewest paired runs for which a 95 % interval of a median exists
MAX_PAIRS = 40
# each row's share of the time budget, by its cost (what a row leaves goes to the next)
WEIGHTS = {
    "connection setup": 1, "first push": 2, "one-file push": 1, "full clone": 1,
    "10 concurrent pushes": 5, "10 concurrent clones": 2,
}  # fmt: skip


def spread(ratios: list[float]) -> float:
    """Half-width of a distribution-free 95 % confidence interval of the median ratio,
    relative to it (order statistics: the k-th lowest and highest of n, k from the binomial
    tail; with fewer than 6 pairs no such interval exists and this is infinite)."""
    n, ordered = len(ratios), sorted(ratios)
    k = _interval_rank(n)
    if k is None:
        return math.inf
    return (ordered[n - 1 - k] - ordered[k]) / 2 / statistics.median(ordered)


def _interval_rank(n: int) -> int | None:
    """The largest k (0-based) with P(k < rank of the median ≤ n - k) ≥ 95 %, or None."""
    best = None
    for k in range(n // 2):
        outside = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        if outside > 0.05:
            break
        best = k
    return best


class Bench:
    def __init__(
        self, work: Path, sides: list[Side], tree: Path, minimum: int, hd_pid: int, budget: float
    ) -> None:
        self.work, self.sides, self.tree, self.minimum = work, sides, tree, minimum
        self.hd_pid = hd_pid
        self.deadline = time.monotonic() + budget
        self.weights_left = sum(WEIGHTS.values())
        self.rows: list[tuple[str, float, float, float, float, int]] = []
        self.clones: list[Path] = []
        self.cpu: dict[str, tuple[float, float]] = {}  # label -> hd server (own, git) s per op

    def record(self, label: str, times: dict[str, list[float]]) -> None:
        ratios = self._ratios(times)
        hd, ssh = (statistics.median(times[s.name]) for s in self.sides)
        ratio, plus = statistics.median(ratios), spread(ratios)
        self.rows.append((label, hd, ssh, ratio, plus, len(ratios)))
        own, git = self.cpu.get(label, (0.0, 0.0))
        shown = "n/a" if math.isinf(plus) else f"{plus:.1%}"
        print(
            f"  {label:<22} hyperdrive {hd:7.3f} s   sshd {ssh:7.3f} s   ratio {ratio:5.2f} "
            f"± {shown} ({len(ratios)} pairs{'' if plus <= TARGET else ', NOT within ±5 %'}; "
            f"hd server CPU {own:.3f} s, its git {git:.3f} s)"
        )

    def alternate(self, label: str, action: Callable[[Side, int], float]) -> None:
        """Paired runs, alternating which side goes first, until the median ratio's 95 %
        interval is within ±5 % (at least `minimum` pairs), or this row's share of the time
        budget is spent (at least 2 pairs), or MAX_PAIRS; keep the medians."""
        times: dict[str, list[float]] = {s.name: [] for s in self.sides}
        cpu = [0.0, 0.0]
        ends = self._share(label)
        for run in range(MAX_PAIRS):
            if run >= self.minimum and spread(self._ratios(times)) <= TARGET:
                break
            if run >= 2 and time.monotonic() >= ends:
                break
            for side in self.sides if run % 2 == 0 else self.sides[::-1]:
                before = cpu_seconds(self.hd_pid)
                times[side.name].append(action(side, run))
                if side is self.sides[0]:
                    after = cpu_seconds(self.hd_pid)
                    cpu = [cpu[0] + after[0] - before[0], cpu[1] + after[1] - before[1]]
        done = len(times[self.sides[0].name])
        self.cpu[label] = (cpu[0] / done, cpu[1] / done)
        self.record(label, times)

    def _share(self, label: str) -> float:
        """When `label` must stop repeating: its weight's part of the time that is left."""
        left = max(0.0, self.deadline - time.monotonic())
        ends = time.monotonic() + left * WEIGHTS[label] / self.weights_left
        self.weights_left -= WEIGHTS[label]
        return ends

    def _ratios(self, times: dict[str, list[float]]) -> list[float]:
        hd, ssh = (times[s.name] for s in self.sides)
        return [a / b for a, b in zip(hd, ssh, strict=True)]

    def fresh(self, side: Side, *repos: str) -> None:
        """git-shell cannot create repos: make the sshd side's, untimed, as Hyperdrive does."""
        if side.name != "sshd":
            return
        hooks = package_hooks()

        async def create_all() -> None:
            root = self.work / "sshd"
            await asyncio.gather(*(create_repo(root / f"{r}.git", hooks) for r in repos))

        asyncio.run(create_all())

    def connection_setup(self) -> None:
        def ls_remote(side: Side, run: int) -> float:
            return timed(lambda: sh("git", "ls-remote", side.url("main"), env=side.env))

        self.alternate("connection setup", ls_remote)

    def first_push(self) -> None:
        def first(side: Side, run: int) -> float:
            self.fresh(side, f"first{run}")
            return timed(lambda: push(side, self.tree, f"first{run}"))

        self.alternate("first push", first)

    def one_file_push(self) -> None:
        def one_file(side: Side, run: int) -> float:
            (self.tree / "one.txt").write_text(f"{side.name} {run}\n")
            sh("git", "commit", "-q", "-am", "one", cwd=self.tree, env=side.env)
            return timed(lambda: push(side, self.tree, "main"))

        (self.tree / "one.txt").write_text("start\n")
        sh("git", "add", "one.txt", cwd=self.tree)
        sh("git", "commit", "-q", "-m", "one", cwd=self.tree, env=self.sides[0].env)
        for side in self.sides:
            push(side, self.tree, "main")
        self.alternate("one-file push", one_file)
        for side in self.sides:  # both sides end at the same commit, for the clones
            push(side, self.tree, "main")

    def full_clone(self) -> None:
        def one_clone(side: Side, run: int) -> float:
            into = self.work / f"clone-{side.name}-{run}"
            self.clones.append(into)
            return timed(lambda: clone(side, "main", into))

        self.alternate("full clone", one_clone)

    def concurrent(self) -> None:
        def pushes(side: Side, run: int) -> float:
            names = [f"many{run}-{n}" for n in range(10)]
            self.fresh(side, *names)
            return in_parallel([functools.partial(push, side, self.tree, n) for n in names])

        def clones(side: Side, run: int) -> float:
            targets = [self.work / f"many-{side.name}-{run}-{n}" for n in range(10)]
            self.clones += targets
            return in_parallel([functools.partial(clone, side, "main", t) for t in targets])

        self.alternate("10 concurrent pushes", pushes)
        self.alternate("10 concurrent clones", clones)

    def verify(self) -> None:
        """No byte lost: every clone holds the pushed commit and passes fsck."""
        head = sh("git", "rev-parse", "HEAD", cwd=self.tree).strip()
        for path in self.clones:
            got = sh("git", "rev-parse", "HEAD", cwd=path).strip()
            assert got == head, f"{path} has {got}, pushed {head}"
            sh("git", "fsck", "--strict", "--no-dangling", cwd=path)
        for root in ("hd", "sshd"):
            for repo in sorted((self.work / root).glob("*.git")):
                sh("git", "fsck", "--no-dangling", cwd=repo)
        print(f"  verified: {len(self.clones)} clones at {head[:7]} pass fsck; so do all repos")


def prepare_sshd_repos(work: Path) -> None:
    """git-shell cannot create repos: make the sshd side's fixed ones as Hyperdrive does."""
    hooks = package_hooks()

    async def create_all() -> None:
        await asyncio.gather(*(create_repo(work / "sshd" / f"{n}.git", hooks) for n in NAMES))

    asyncio.run(create_all())


def report(bench: Bench, negotiated: dict[str, str], work: Path) -> None:
    print(f"\nload average {os.getloadavg()[0]:.1f}; ratio = median of paired runs (hd ÷ sshd),")
    print("± = half its 95 % confidence interval (order statistics), target ±5 %")
    print("| operation | Hyperdrive (s) | OpenSSH sshd + git-shell (s) | ratio ± 95 % CI | pairs "
          "| goal |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, hd, ssh, ratio, plus, pairs in bench.rows:
        goal = GOALS.get(label, 0.9)
        mark = "ok" if ratio <= goal else "MISSED"
        ci = "n/a" if math.isinf(plus) else f"{plus:.1%}" + ("" if plus <= TARGET else " (> 5 %)")
        print(
            f"| {label} | {hd:.3f} | {ssh:.3f} | {ratio:.2f} ± {ci} | {pairs} | ≤ {goal} {mark} |"
        )
    for side, text in negotiated.items():
        print(f"negotiated with {side}: {text}")
    for root in ("spool-hd", "spool-sshd"):
        count = len(list((work / root / "incoming").glob("*.json")))
        print(f"{root}: {count} trigger files written by the post-receive hook")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument(
        "--pairs", type=int, default=MIN_PAIRS, help="paired runs of every operation, at least"
    )
    parser.add_argument(
        "--minutes", type=float, default=9.0, help="time for all the rows' runs, about"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the Hyperdrive server into this")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_hyperdrive(Path(args.serve[0]), Path(args.serve[1]))
        return
    with tempfile.TemporaryDirectory(prefix="hd-git-bench-") as tmp:
        run_bench(Path(tmp), args)


def run_bench(work: Path, args: argparse.Namespace) -> None:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / "client")
    pub = work / "client.pub"
    prepare_sshd_repos(work)
    hd_proc, hd_port = start_hyperdrive(work, pub, args.profile)
    sshd_proc, sshd_port = start_sshd(work, pub)
    try:
        sides = [
            Side("hyperdrive", work / "client", hd_port, "git", "/"),
            Side("sshd", work / "client", sshd_port, "root", f"{work}/sshd/"),
        ]
        print(f"client forces: KexAlgorithms={KEX} Ciphers={CIPHER} HostKeyAlgorithms={HOSTKEY}")
        tree = work / "source"
        started = time.perf_counter()
        source_repo(tree, args.files, args.mb, sides[0].env)
        took = time.perf_counter() - started
        print(f"source: {args.files} files, {args.mb} MB random, made in {took:.1f} s")
        for side in sides:  # hyperdrive creates its repos here; sshd's exist already
            push(side, tree, "warm")
            push(side, tree, "main")
        negotiated = {s.name: s.negotiated() for s in sides}
        bench = Bench(work, sides, tree, args.pairs, hd_proc.pid, args.minutes * 60)
        bench.connection_setup()
        bench.first_push()
        bench.one_file_push()
        bench.full_clone()
        bench.concurrent()
        bench.verify()
        report(bench, negotiated, work)
    finally:
        hd_proc.communicate("", timeout=30)
        sshd_proc.send_signal(signal.SIGTERM)
        sshd_proc.wait(timeout=30)
    if args.profile:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
