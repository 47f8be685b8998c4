"""avatarproxy benchmark: one command, everything on loopback, ratios in one run.

    .venv/bin/python bench/run.py            # full run, a few minutes
    .venv/bin/python bench/run.py --smoke    # seconds; the test suite runs this

Starts its own redis-server, a fake identity provider (real msal, TLS) and
fake Graph (configurable latency), avatarproxy, Debian's nginx serving the
very same avatar bytes, and a bare aiohttp handler; drives them with wrk and
a paced open-loop client; prints a table and writes bench/results/latest.json.
The cold herd is also measured with both cores saturated by a CPU load
generator it starts and stops (bench/cpuload.py, ``avatarproxy-bench-cpuload``
in ``ps``).
Absolute numbers on a shared machine are noise: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

import cpuload  # noqa: E402
import frontbench  # noqa: E402
import instructions  # noqa: E402
import load  # noqa: E402
import misses  # noqa: E402
import servers  # noqa: E402
from fakeidp import start_fake_idp  # noqa: E402

from avatarproxy.demo.fakegraph import FakeGraph, start_fake_graph  # noqa: E402
from avatarproxy.demo.people import FakePerson  # noqa: E402

BROWSER_ACCEPT = "image/avif,image/webp,*/*"
REDIS_TIER = "avatarproxy (Redis tier only)"
BARE_GET = "bare aiohttp + one redis-py GET"


@dataclass(frozen=True)
class Profile:
    seconds: float  # per wrk run
    paced_rate: float
    paced_seconds: float
    working_set: int
    miss_samples: int
    herd: int
    economy_users: int
    economy_views: int
    memory_requests: int


FULL = Profile(10, 1000, 5, 100, 30, 500, 2000, 20000, 100_000)
SMOKE = Profile(1, 200, 1, 5, 2, 50, 20, 100, 200)


class TimedGraph(FakeGraph):
    """The fake Graph, recording when each request started and ended."""

    def __init__(self, people: list[FakePerson]) -> None:
        super().__init__(people)
        self.timings: list[tuple[float, float, str]] = []

    async def _handle(self, request: Any) -> Any:
        started = time.perf_counter()
        response = await super()._handle(request)
        self.timings.append((started, time.perf_counter(), request.raw_path))
        return response


class GraphThread:
    """The fake Graph on its own event loop, in its own thread.

    On the orchestrator's loop its HTTP handling would queue behind the load
    client and the fake IdP, and that wait would be counted as the service's.
    """

    def __init__(self, graph: FakeGraph) -> None:
        self._graph = graph
        self._loop = _new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-graph",
                                        daemon=True)

    def start(self) -> str:
        """Serve the fake Graph; its v1.0 base URL."""
        self._thread.start()
        self._runner, url = asyncio.run_coroutine_threadsafe(
            start_fake_graph(self._graph), self._loop).result()
        return url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed, like the service: the fake Graph answers with little overhead."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def synthetic_people(count: int) -> list[FakePerson]:
    master = Image.linear_gradient("L").resize((648, 648)).convert("RGB")
    return [FakePerson(upn=f"user{i:05d}@contoso.com",
                       object_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"user{i}")),
                       display_name=f"User {i}", photo=master) for i in range(count)]


class Bench:
    def __init__(self, profile: Profile, workdir: Path, workers: int,
                 against: str | None = None) -> None:
        self.p = profile
        self.workdir = workdir
        self.workers = workers
        self.against = against  # a git revision measured alongside (misses only)
        self.procs: list[servers.Proc] = []
        self.next_user = 0
        self.results: dict[str, Any] = {}

    def users(self, count: int) -> list[str]:
        """Users never requested before in this run (cold everywhere)."""
        start, self.next_user = self.next_user, self.next_user + count
        return [f"user{i:05d}@contoso.com" for i in range(start, start + count)]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "AVATARPROXY_GRAPH_BASE_URL": self.graph_url,
            "AVATARPROXY_AUTH_TENANT_ID": self.idp.tenant,
            "AVATARPROXY_AUTH_CLIENT_ID": self.idp.client_id,
            "AVATARPROXY_AUTH_CLIENT_SECRET": self.idp.client_secret,
            "AVATARPROXY_AUTH_AUTHORITY": self.idp.authority,
            "AVATARPROXY_AUTH_CA_FILE": str(self.idp.ca_file),
            "AVATARPROXY_CACHE_REDIS_URL": self.redis_url,
            "AZURE_CLIENT_SECRET": "", "AZURE_CLIENT_ID": "", "AZURE_TENANT_ID": "",
        }
        if _supports("server.workers"):
            env["AVATARPROXY_SERVER_WORKERS"] = extra.pop("workers", str(self.workers))
        extra.pop("workers", None)
        if _supports("security.rate_limit_per_second"):
            # All load comes from 127.0.0.1: measure the service, not the misses limiter.
            env["AVATARPROXY_SECURITY_RATE_LIMIT_PER_SECOND"] = "0"
        env.update(extra)
        return env

    async def start(self, name: str, wrap: tuple[str, ...] = (), **extra: str) -> servers.Proc:
        # In a thread: the service's msal talks to the fake IdP on this loop.
        workers = int(extra.get("workers", self.workers))
        proc = await asyncio.to_thread(servers.service, self.workdir, name, self.env(**extra),
                                       workers, wrap)
        self.procs.append(proc)
        return proc

    async def setup(self) -> None:
        self.redis = servers.redis(self.workdir)
        self.procs.append(self.redis)
        self.redis_url = f"redis://127.0.0.1:{self.redis.port}/0"
        self.idp = await start_fake_idp(self.workdir / "tls")
        total = (self.p.working_set + misses.people_needed(self.p.miss_samples, self.against)
                 + self.p.economy_users
                 + self.p.memory_requests // 50 + 10)
        self.graph = TimedGraph(synthetic_people(total))
        self.graph.accept_token = self.idp.issued.__contains__
        self.graph_thread = GraphThread(self.graph)
        self.graph_url = self.graph_thread.start()

    async def teardown(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.graph_thread.stop()
        await self.idp.close()

    # 1 + 2: hits ---------------------------------------------------------------
    async def hits(self) -> None:
        service = await self.start("service")
        users = self.users(self.p.working_set)
        paths = [f"/avatar/{u}/48" for u in users]
        docroot = self.workdir / "docroot"
        async with aiohttp.ClientSession() as session:
            for path in paths:  # warm both tiers, and copy the exact bytes for nginx
                async with session.get(f"http://127.0.0.1:{service.port}{path}") as resp:
                    body = await resp.read()
                target = docroot / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(body)
        nginx = servers.nginx(self.workdir, docroot, self.workers)
        bare = servers.bare(self.workdir, docroot / paths[0].lstrip("/"), self.workers)
        self.procs += [nginx, bare]
        script = self.workdir / "paths.lua"
        script.write_text("paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
                          "i = 0\nrequest = function()\n  i = i % #paths + 1\n"
                          "  return wrk.format(nil, paths[i])\nend\n")
        table: dict[str, Any] = {}
        for name, proc, headers in (("nginx", nginx, ()), ("bare aiohttp", bare, ()),
                                    ("avatarproxy", service, ()),
                                    ("avatarproxy (browser Accept)", service,
                                     (f"Accept: {BROWSER_ACCEPT}",))):
            table[name] = await self._wrk(proc, script, headers)
            table[name].update(await self._paced(proc, paths[0], headers))
        # The caching front before the same service (bench/frontbench.py).
        table.update(await frontbench.rows(self.workdir, service, nginx, paths, script,
                                           BROWSER_ACCEPT, self.p.seconds, self._wrk,
                                           self._paced))
        service.stop()
        # A Redis-tier hit against the floor of any handler answering from Redis: the
        # bare handler making one redis-py GET per request, same Redis, same bytes.
        bare_get = servers.bare(self.workdir, docroot / paths[0].lstrip("/"), self.workers,
                                redis_url=self.redis_url)
        self.procs.append(bare_get)
        table[BARE_GET] = await self._wrk(bare_get, script, ())
        bare_get.stop()
        redis_only = await self.start("service-redis-tier", AVATARPROXY_CACHE_MEMORY_MAX_BYTES="0")
        table[REDIS_TIER] = await self._wrk(redis_only, script, ())
        redis_only.stop()
        base = table["nginx"]
        for row in table.values():
            row["rps_vs_nginx"] = round(row["rps"] / base["rps"], 3)
            row["p99_vs_nginx"] = round(row["p99_ms"] / base["p99_ms"], 3)
        table[REDIS_TIER]["rps_vs_bare_get"] = round(
            table[REDIS_TIER]["rps"] / table[BARE_GET]["rps"], 3)
        table[REDIS_TIER]["rps_vs_bare"] = round(
            table[REDIS_TIER]["rps"] / table["bare aiohttp"]["rps"], 3)
        self.results["hits"] = table
        if instructions.available():
            self.results["instructions"] = await self.instructions(docroot, paths[0])

    async def instructions(self, docroot: Path, path: str) -> dict[str, Any]:
        """Instructions per hit under callgrind, one process each (see instructions.py)."""
        seconds = max(2.0, self.p.seconds / 2)

        def wrap(name: str) -> tuple[str, ...]:
            return tuple(instructions.wrapper(self.workdir, name))

        rows: dict[str, Any] = {}
        nginx = servers.nginx(self.workdir, docroot, 1, wrap("nginx"))
        bare = servers.bare(self.workdir, docroot / path.lstrip("/"), 1, wrap("bare"))
        service = await self.start("service-callgrind", wrap("service"), workers="1")
        self.procs += [nginx, bare]
        browser = (f"Accept: {BROWSER_ACCEPT}",)
        runs: list[tuple[str, str, servers.Proc, tuple[str, ...]]] = [
            ("nginx", "nginx", nginx, ()), ("bare aiohttp", "bare", bare, ()),
            ("avatarproxy", "service", service, ()),
            ("avatarproxy (browser Accept)", "service", service, browser)]
        if self.p is not SMOKE:  # a second Python start under valgrind: ~20 s
            redis_only = await self.start("service-callgrind-redis", wrap("redis"),
                                          workers="1", AVATARPROXY_CACHE_MEMORY_MAX_BYTES="0")
            bare_get = servers.bare(self.workdir, docroot / path.lstrip("/"), 1,
                                    wrap("bare-get"), self.redis_url)
            self.procs.append(bare_get)
            runs += [(BARE_GET, "bare-get", bare_get, ()),
                     (REDIS_TIER, "redis", redis_only, ())]
        for label, name, proc, headers in runs:
            # In a thread: it blocks on valgrind and wrk; this loop still runs the fake IdP.
            rows[label] = await asyncio.to_thread(
                instructions.per_request, proc, self.workdir, name, path, seconds, headers)
        for _, _, proc, _ in runs:
            proc.stop()  # stopping twice is harmless
        base = rows["nginx"]["instructions_per_request"]
        bare_count = rows["bare aiohttp"]["instructions_per_request"]
        for row in rows.values():
            row["x_nginx"] = round(row["instructions_per_request"] / base, 1)
            row["x_bare"] = round(row["instructions_per_request"] / bare_count, 2)
        if BARE_GET in rows:
            rows[REDIS_TIER]["x_bare_get"] = round(
                rows[REDIS_TIER]["instructions_per_request"]
                / rows[BARE_GET]["instructions_per_request"], 2)
        return rows

    async def _paced(self, proc: servers.Proc, path: str,
                     headers: tuple[str, ...]) -> dict[str, Any]:
        """Latency at a fixed rate (open loop) for one hot path."""
        p50, p99, errors = await load.paced(
            f"http://127.0.0.1:{proc.port}{path}", self.p.paced_rate, self.p.paced_seconds,
            dict(h.split(": ", 1) for h in headers))
        return {"paced_p50_ms": round(p50, 2), "paced_p99_ms": round(p99, 2),
                "paced_errors": errors}

    async def _wrk(self, proc: servers.Proc, script: Path,
                   headers: tuple[str, ...]) -> dict[str, Any]:
        pids = proc.pids()
        cpu = servers.cpu_seconds(pids)
        # In a thread: wrk blocks; this loop still runs the fake IdP.
        result = await asyncio.to_thread(load.wrk, f"http://127.0.0.1:{proc.port}",
                                         self.p.seconds, headers=(*headers,), script=script)
        used = servers.cpu_seconds(pids) - cpu
        row = asdict(result)
        row["server_cpu_us_per_request"] = round(used / max(1, result.requests) * 1e6, 1)
        return row

    # 3: misses (bench/misses.py) -------------------------------------------------
    async def misses(self) -> None:
        await misses.measure(self, count_instructions=self.p is not SMOKE)

    # 4: cold herd ----------------------------------------------------------------
    async def herd(self) -> None:
        first = await self.start("service-a", workers="1")
        second = await self.start("service-b", workers="1")
        self.graph.latency = 0.05
        herd = await self._herd(first, second)
        # Both cores busy (bench/cpuload.py): every event loop lags behind its work.
        with cpuload.saturate(seconds=120):
            await asyncio.sleep(0.5)  # the load processes are spinning
            herd["saturated"] = await self._herd(first, second)
        self.graph.latency = 0.0
        self.results["cold_herd"] = herd
        first.stop()
        second.stop()

    async def _herd(self, first: servers.Proc, second: servers.Proc) -> dict[str, Any]:
        """``herd`` concurrent requests for one uncached avatar, alternating between
        two processes: how many photo downloads Graph saw, the latencies."""
        (user,) = self.users(1)
        before = len(self.graph.timings)
        latencies: list[float] = []
        stand_ins = 0
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(port: int) -> None:
                nonlocal stand_ins
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/avatar/{user}/48") as resp:
                    await resp.read()
                    stand_ins += "X-Avatar-Stand-In" in resp.headers
                latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(one((first, second)[i % 2].port)
                                   for i in range(self.p.herd)))
        downloads = sum("$value" in path for _, _, path in self.graph.timings[before:])
        return {"requests": self.p.herd, "graph_photo_downloads": downloads,
                "stand_ins": stand_ins,
                "p50_ms": round(load.percentile(latencies, 0.5) * 1000, 1),
                "p99_ms": round(load.percentile(latencies, 0.99) * 1000, 1)}

    # 5: Graph economy --------------------------------------------------------------
    async def economy(self) -> None:
        service = await self.start("service-economy")
        users = self.users(self.p.economy_users)
        rng = random.Random(7)
        weights = [1 / (rank + 1) for rank in range(len(users))]  # Zipf, s = 1
        views = [(rng.choices(users, weights)[0], rng.choice((32, 48, 96)))
                 for _ in range(self.p.economy_views)]
        before = len(self.graph.timings)
        await drive(service.port, views, concurrency=32)
        calls = len(self.graph.timings) - before
        needed: dict[str, set[int]] = {}
        for user, size in views:
            needed.setdefault(user, set()).add(48 if size <= 48 else 96)
        minimum = sum(1 + len(sizes) for sizes in needed.values())
        self.results["graph_economy"] = {"page_views": len(views), "graph_calls": calls,
                                         "minimum": minimum, "ratio": round(calls / minimum, 3)}
        service.stop()

    # 6: memory ---------------------------------------------------------------------
    async def memory(self) -> None:
        service = await self.start("service-memory",
                                   AVATARPROXY_CACHE_MEMORY_MAX_BYTES=str(64 * 1024 * 1024))
        users = self.users(max(1, self.p.memory_requests // 50))
        requests = [(u, s) for u in users for s in range(1, 51)][: self.p.memory_requests]
        await drive(service.port, requests, concurrency=16)
        pids = service.pids()
        workers = servers.workers(pids)
        # The target counts the workers; the supervisor (signals only) and
        # multiprocessing's resource tracker are reported beside them.
        self.results["memory"] = {
            "distinct_requests": len(requests), "workers": len(workers),
            "peak_rss_mib": round(servers.rss_bytes(workers) / 2**20, 1),
            "all_processes": len(pids),
            "all_processes_peak_rss_mib": round(servers.rss_bytes(pids) / 2**20, 1),
            "budget_mib": 64 + 80 * self.workers}
        service.stop()


async def drive(port: int, requests: list[tuple[str, int]], concurrency: int) -> None:
    """GET every (user, size) with ``concurrency`` requests in flight."""
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while not queue.empty():
                user, size = queue.get_nowait()
                async with session.get(f"http://127.0.0.1:{port}/avatar/{user}/{size}") as resp:
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _supports(dotted: str) -> bool:
    from avatarproxy.config import OPTIONS

    return any(f"{o.section}.{o.key}" == dotted for o in OPTIONS)


def print_table(results: dict[str, Any]) -> None:
    print(f"\navatarproxy benchmark, {results['date']}, {results['cpus']} CPUs, "
          f"server.workers = {results['workers']}")
    if "hits" in results:
        _print_hits(results["hits"])
    if "instructions" in results:
        print("\nInstructions per hit (callgrind, 1 process)  per request   x nginx   x bare")
        for name, row in results["instructions"].items():
            print(f"  {name:<42}{row['instructions_per_request']:>12,.0f}"
                  f"{row['x_nginx']:>9.1f}x{row['x_bare']:>8.2f}x")
        if "x_bare_get" in results["instructions"].get(REDIS_TIER, {}):
            print(f"  Redis-tier hit: {results['instructions'][REDIS_TIER]['x_bare_get']:.2f}x "
                  "the instructions of the bare handler with one redis-py GET")
    misses.print_rows(results)
    if "cold_herd" in results:
        herd = results["cold_herd"]
        print()
        for label, row in (("", herd), (", both cores saturated", herd["saturated"])):
            print(f"Cold herd{label}: {row['requests']} requests, 2 processes -> "
                  f"{row['graph_photo_downloads']} Graph photo download(s), "
                  f"{row['stand_ins']} stand-ins, p50/p99 {row['p50_ms']}/{row['p99_ms']} ms")
    if "graph_economy" in results:
        eco = results["graph_economy"]
        print(f"Graph economy: {eco['page_views']} Zipf page views -> {eco['graph_calls']} "
              f"Graph calls, minimum {eco['minimum']} (ratio {eco['ratio']})")
    if "memory" in results:
        mem = results["memory"]
        print(f"Memory: {mem['distinct_requests']} distinct requests -> peak RSS "
              f"{mem['peak_rss_mib']} MiB over {mem['workers']} workers "
              f"(budget {mem['budget_mib']} MiB); {mem['all_processes_peak_rss_mib']} MiB "
              f"over all {mem['all_processes']} processes")


def _print_hits(hits: dict[str, Any]) -> None:
    print(f"\n{'Hits (wrk -t2 -c64)':<58}req/s   x nginx    p50 ms   p99 ms  x nginx p99"
          "  paced p50/p99 ms  CPU us/req")
    for name, row in hits.items():
        paced = (f"{row['paced_p50_ms']:.2f}/{row['paced_p99_ms']:.2f}"
                 if "paced_p50_ms" in row else "-")
        print(f"  {name:<54}{row['rps']:>8.0f}{row['rps_vs_nginx']:>9.2f}x"
              f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['p99_vs_nginx']:>11.2f}x"
              f"{paced:>18}{row['server_cpu_us_per_request']:>12.0f}")
        if "rps_vs_nginx_interleaved" in row:
            print(f"    {'(runs alternated with nginx: medians)':<52}"
                  f"{row['rps_vs_nginx_interleaved']:>17.2f}x{row['p99_vs_nginx_interleaved']:>29.2f}x")
    if REDIS_TIER in hits and "rps_vs_bare_get" in hits[REDIS_TIER]:
        row = hits[REDIS_TIER]
        print(f"  Redis-tier hit: {row['rps_vs_bare_get']:.2f}x the bare handler with one "
              f"redis-py GET, {row['rps_vs_bare']:.2f}x bare aiohttp (req/s, this run)")


SECTIONS = ("hits", "misses", "herd", "economy", "memory")


async def run(profile: Profile, workers: int, only: tuple[str, ...] = SECTIONS,
              against: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="avatarproxy-bench-") as tmp:
        # nginx workers drop root privileges: they must be able to read the docroot.
        Path(tmp).chmod(0o755)
        bench = Bench(profile, Path(tmp), workers, against)
        await bench.setup()
        try:
            for name in SECTIONS:
                if name in only:
                    await getattr(bench, name)()
        finally:
            await bench.teardown()
    results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
               "python": platform.python_version(), "workers": workers,
               "profile": asdict(profile), **bench.results}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    parser.add_argument("--workers", type=int, default=2, help="server.workers (default 2)")
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); default: all")
    parser.add_argument("--against", metavar="REVISION",
                        help="misses: measure git REVISION's service too, alternating")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    results = asyncio.run(run(SMOKE if args.smoke else FULL, args.workers,
                                tuple(args.only or SECTIONS), args.against))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nJSON: {args.output}")


if __name__ == "__main__":
    main()
