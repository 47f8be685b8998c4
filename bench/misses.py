"""The miss path: what a miss adds to Graph's own time, and what it costs the service.

Each miss asks for a person nobody asked for before (cold in both tiers), one
at a time, and every answer must be the photo (not stand-in initials past the
deadline). "Added" is the client's time minus the fake Graph's handling time
for that miss's Graph calls; the fake runs on its own loop and thread, so its
HTTP parsing and the loopback hops are counted as ours (a few tenths of a ms).
Rows, each from ``miss_samples`` misses, with Graph answering at once and
after 50 ms:

- small sizes (48->40, 120->100, exact 96): JPEG (no ``Accept``) and a browser's
  ``Accept`` (WebP), from the benchmark's gradient photo;
- 600 from the 648 px photo, JPEG, WebP and AVIF (each asked by its ``Accept``),
  from a grainy 648 px portrait stored as Exchange does (``tests/photos.py``: tens
  of KB, like a real one; the gradient would flatter the decoder and encoders);
- full runs only: instructions per miss under callgrind (one process, pool
  threads included), the figure that repeats on a shared machine.

Server CPU per miss (all processes' threads, from ``/proc``) is steadier than
latency on a shared machine. With Graph at 50 ms a miss takes about 1 ms more
CPU, and more latency, for the same instructions (callgrind counts the same;
an idle service uses none): the worker sleeps between its steps and resumes
on a cold core, after the machine's other work.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import instructions
import load
import servers
from photos import Look, hd_bodies

from avatarproxy.demo.photos import RawPhoto

if TYPE_CHECKING:
    from run import Bench

ROOT = Path(__file__).resolve().parent.parent
BROWSER_ACCEPT = "image/avif,image/webp,*/*"  # as run.py's hit rows
LATENCIES = (0.0, 0.05)
SMALL = (("48->40", 40), ("120->100", 100), ("exact 96", 96))
SMALL_FORMATS = (("jpeg", "*/*"), ("browser", BROWSER_ACCEPT))
LARGE = ("600 from 648", 600)
LARGE_FORMATS = (("jpeg", "*/*"), ("webp", "image/webp"), ("avif", "image/avif"))
PORTRAIT = Look("#1f4e79", "#9dc3e6", "#c55a11")
COUNTED_MISSES = 10  # per row under callgrind: about 0.3 s (small) to 1 s (600) each


def people_needed(miss_samples: int, against: str | None) -> int:
    """Fake people the miss section uses (each once)."""
    rows = len(LATENCIES) * (len(SMALL) * len(SMALL_FORMATS) + len(LARGE_FORMATS))
    services = 2 if against else 1
    return services * (rows * miss_samples + 1 + 2 * (COUNTED_MISSES + 1))


async def measure(bench: Bench, count_instructions: bool) -> None:
    """Fill ``bench.results`` with "misses", "large_misses" and "miss_instructions";
    with ``bench.against``, each row also measures that git revision's service, its
    misses alternating with this checkout's (the machine's changing load hits both
    alike), under the row's "against"."""
    portrait = RawPhoto(hd_bodies(PORTRAIT))
    # Latency moves with the rest of the machine's load: say what it was.
    load_before = os.getloadavg()[0]
    services = [await bench.start("service-miss")]
    if bench.against:
        services.append(await _start_revision(bench, bench.against, "service-miss-against"))
    small: dict[str, Any] = {}
    large: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        # Not measured: the first miss of a process also opens its connections.
        for service in services:
            await one_miss(bench, session, service, bench.users(1)[0], 48, "*/*")
        for latency in LATENCIES:
            bench.graph.latency = latency
            prefix = f"graph {int(latency * 1000)} ms"
            for label, size in SMALL:
                for fmt, accept in SMALL_FORMATS:
                    small[f"{prefix}, {label}, {fmt}"] = await _row(
                        bench, session, services, size, accept, None)
            for fmt, accept in LARGE_FORMATS:
                large[f"{prefix}, {LARGE[0]}, {fmt}"] = await _row(
                    bench, session, services, LARGE[1], accept, portrait)
    bench.graph.latency = 0.0
    for service in services:
        service.stop()
    bench.results["misses"] = small
    bench.results["large_misses"] = large
    bench.results["misses_load_average"] = [load_before, os.getloadavg()[0]]
    if count_instructions and instructions.available():
        bench.results["miss_instructions"] = await _instructions(bench, portrait, None)
        if bench.against:
            bench.results["miss_instructions_against"] = await _instructions(
                bench, portrait, bench.against)


async def _start_revision(bench: Bench, revision: str, name: str,
                          wrap: tuple[str, ...] = (), **extra: str) -> servers.Proc:
    """The service of git ``revision`` (its ``avatarproxy/`` exported next to the
    benchmark's files), with this checkout's configuration."""
    tree = await asyncio.to_thread(_export, revision, bench.workdir)
    # ``python -m`` puts the working directory first on sys.path: run it there.
    return await bench.start(name, ("env", "-C", str(tree), *wrap), PYTHONPATH=str(tree),
                             **extra)


def _export(revision: str, workdir: Path) -> Path:
    tree = workdir / f"revision-{revision.replace('/', '_')}"
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "archive", revision, "avatarproxy"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    return tree


async def _row(bench: Bench, session: aiohttp.ClientSession, services: list[servers.Proc],
               size: int, accept: str, photo: RawPhoto | None) -> dict[str, Any]:
    """One row: ``miss_samples`` misses per service, alternating between them."""
    added: list[list[float]] = [[] for _ in services]
    cpu = [servers.thread_cpu_seconds(service.pids()) for service in services]
    for sample in range(bench.p.miss_samples):
        order = list(enumerate(services))
        for index, service in order[sample % len(order):] + order[:sample % len(order)]:
            (user,) = bench.users(1)
            if photo is not None:
                bench.graph.set_raw_photo(user, photo)  # nobody asked for them yet
            added[index].append(await one_miss(bench, session, service, user, size, accept))
    rows = [{"added_p50_ms": round(load.percentile(times, 0.5), 2),
             "added_p99_ms": round(load.percentile(times, 0.99), 2),
             "server_cpu_ms_per_miss": round(
                 (servers.thread_cpu_seconds(service.pids()) - used) / len(times) * 1000, 2)}
            for times, service, used in zip(added, services, cpu, strict=True)]
    if len(rows) > 1:
        rows[0]["against"] = rows[1]
    return rows[0]


async def one_miss(bench: Bench, session: aiohttp.ClientSession, proc: servers.Proc,
                   user: str, size: int, accept: str) -> float:
    """One request for a cold person: ms it took beyond the fake Graph's own time."""
    before = len(bench.graph.timings)
    started = time.perf_counter()
    async with session.get(f"http://127.0.0.1:{proc.port}/avatar/{user}/{size}",
                           headers={"Accept": accept}) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
        assert resp.headers["X-Avatar-Source"] == "photo", dict(resp.headers)
    total = time.perf_counter() - started
    graph_time = sum(end - start for start, end, _ in bench.graph.timings[before:])
    return (total - graph_time) * 1000


async def _instructions(bench: Bench, portrait: RawPhoto,
                        revision: str | None) -> dict[str, Any]:
    """Instructions per miss: one service process (this checkout's, or ``revision``'s)
    under callgrind, counting only while it answers ``COUNTED_MISSES`` misses of a
    kind (Graph answering at once)."""
    name = "miss-against" if revision else "miss"
    wrap = tuple(instructions.wrapper(bench.workdir, name))
    # Under valgrind Python runs ~50x slower: give Redis and the deadline room.
    slow = {"workers": "1", "AVATARPROXY_CACHE_REDIS_TIMEOUT_SECONDS": "10",
            "AVATARPROXY_SERVER_REQUEST_DEADLINE_SECONDS": "60"}
    service = (await _start_revision(bench, revision, f"service-{name}", wrap, **slow)
               if revision else await bench.start(f"service-{name}", wrap, **slow))
    pid = service.process.pid
    rows: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for (label, size), (fmt, accept), photo in (
                (SMALL[0], SMALL_FORMATS[0], None), (LARGE, LARGE_FORMATS[0], portrait)):
            users = bench.users(COUNTED_MISSES + 1)
            for user in users if photo is not None else ():
                bench.graph.set_raw_photo(user, photo)
            # Not counted: the first miss of the kind (imports, connections, first decode).
            await one_miss(bench, session, service, users[0], size, accept)
            await asyncio.to_thread(instructions.start_counting, pid)
            for user in users[1:]:
                await one_miss(bench, session, service, user, size, accept)
            counted = await asyncio.to_thread(instructions.stop_counting, pid, bench.workdir,
                                              name)
            rows[f"{label}, {fmt}"] = {"misses": COUNTED_MISSES,
                                       "instructions_per_miss": counted // COUNTED_MISSES}
    service.stop()
    return rows


def print_rows(results: dict[str, Any]) -> None:
    """The miss section of the table ``run.py`` prints; a revision measured
    alongside (``--against``) in brackets."""
    rows = {**results.get("misses", {}), **results.get("large_misses", {})}
    if rows:
        before, after = results.get("misses_load_average", ("?", "?"))
        print(f"\nMiss path (load average {before:.2f} before, {after:.2f} after)")
        print("  time added over Graph's                         p50 ms   p99 ms  CPU ms/miss")
        for name, row in rows.items():
            print(f"  {name:<46}{_cells(row)}")
            if "against" in row:
                print(f"    {'(against)':<44}{_cells(row['against'])}")
    against = results.get("miss_instructions_against", {})
    if "miss_instructions" in results:
        print("\nInstructions per miss (callgrind, 1 process, Graph at 0 ms)")
        for name, row in results["miss_instructions"].items():
            other = (f"  (against: {against[name]['instructions_per_miss']:,})"
                     if name in against else "")
            print(f"  {name:<46}{row['instructions_per_miss']:>14,}{other}")


def _cells(row: dict[str, float]) -> str:
    return (f"{row['added_p50_ms']:>8.2f}{row['added_p99_ms']:>9.2f}"
            f"{row['server_cpu_ms_per_miss']:>13.2f}")
