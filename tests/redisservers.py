"""Real Redis topologies on loopback for the tests: TLS with ACL users, a
Cluster of three masters with a replica each, a master and replica watched by
three Sentinels. Every process runs in its own temporary directory on free
ports and is stopped by whoever started it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from loopback import free_port, stop_process, wait_for
from tlsutil import ServerTLS

MASTER_NAME = "mymaster"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: install Redis (apt-get install redis-server) "
                    "to run the cache tests", pytrace=False)
    return path


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    client_options: dict[str, Any]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           **self.client_options)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)


def start_server(directory: Path, *args: str, tls: ServerTLS | None = None,
                 config: str = "", port: int | None = None, **client_options: Any) -> Server:
    """One redis-server (``config`` first, as a file, then ``args``) that answers
    PING, on ``port`` (say, to start it again where it was) or a free one."""
    directory.mkdir(parents=True, exist_ok=True)
    # A freed port can be taken again before redis binds it: try a few.
    ports: Iterable[int] = [port] if port is not None else (free_port() for _ in range(5))
    for port in ports:
        argv = [binary("redis-server")]
        if config:
            (directory / "redis.conf").write_text(config.replace("$PORT", str(port)))
            argv.append(str(directory / "redis.conf"))
        if tls is None:
            argv += ["--port", str(port)]
        else:
            argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert_file),
                     "--tls-key-file", str(tls.key_file), "--tls-ca-cert-file", str(tls.ca_file),
                     "--tls-auth-clients", "no"]
            client_options = {"ssl": True, "ssl_ca_certs": str(tls.ca_file), **client_options}
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning",
                 "--logfile", str(directory / "redis.log"), *args]
        server = Server(port, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL), client_options)
        client = server.client()
        try:
            deadline = time.monotonic() + 10
            while server.process.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        return server
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        server.stop()
    raise RuntimeError(f"redis-server did not start on a loopback port ({directory})")


@dataclass
class Topology:
    """Servers of one deployment, and the avatarproxy settings that reach it."""

    servers: list[Server] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def masters(self) -> list[Server]:
        alive = [s for s in self.servers if s.process.poll() is None]
        found = []
        for server in alive:
            client = server.client()
            try:
                if client.info("replication").get("role") == "master":  # not Sentinels
                    found.append(server)
            finally:
                client.close()
        return found

    def flush(self) -> None:
        for server in self.masters():
            client = server.client()
            try:
                client.flushall()
            finally:
                client.close()


def _wait_until_each(servers: list[Server], ready: Callable[[redis.Redis], bool],
                     what: str) -> None:
    """Wait for ``ready`` to hold on every server, asked through its own client."""
    for server in servers:
        with server.client() as client:
            wait_for(partial(ready, client), f"{what} {server.port}")


# -- the three deployments ----------------------------------------------------------

def service_acl(key_prefix: str = "avatarproxy:") -> tuple[str, ...]:
    """What docs/redis.md ("Redis in production") tells operators to grant:
    the keys and the purge channel both carry ``cache.key_prefix``."""
    return ("resetchannels", f"~{key_prefix}*", f"&{key_prefix}purge", "-@all",
            "+get", "+set", "+exists", "+expire", "+sadd", "+smembers", "+del",
            "+eval", "+evalsha", "+script|load", "+publish", "+subscribe", "+unsubscribe",
            "+hmget", "+hset", "+time", "+ping",
            "+hget", "+hdel", "+hkeys")  # the Gravatar index (directory.gravatar)


# A second deployment sharing the TLS Redis: its own key prefix, and ACL user of that name.
OTHER_PREFIX = "tenant-b:"


def start_tls(directory: Path, tls: ServerTLS, password_file: Path) -> Topology:
    """TLS only, the default user disabled, an ACL user ``avatarproxy`` with a
    password and only the keys, channel and commands docs/redis.md lists; and
    ``tenant-b`` the same for the prefix ``tenant-b:`` (without the optional
    grant of the old fixed channel ``avatarproxy:purge``)."""
    password = "correct horse battery staple"
    password_file.write_text(password + "\n")
    # The tests' own housekeeping (INFO, FLUSHALL) goes through an admin user.
    server = start_server(directory, "--user", "default", "off",
                          "--user", "avatarproxy", "on", f">{password}", *service_acl(),
                          "--user", OTHER_PREFIX.rstrip(":"), "on", f">{password}",
                          *service_acl(OTHER_PREFIX),
                          "--user", "admin", "on", ">admin-secret", "~*", "&*", "+@all",
                          tls=tls, username="admin", password="admin-secret")
    return Topology([server], {
        "cache.redis_url": f"rediss://avatarproxy@localhost:{server.port}/0",
        "cache.redis_password_file": str(password_file),
        "cache.redis_ca_file": str(tls.ca_file)})


def start_cluster(directory: Path) -> Topology:
    """Three masters with a replica each, formed by ``redis-cli --cluster create``."""
    topology = Topology()
    try:
        for index in range(6):
            topology.servers.append(start_server(
                directory / f"node{index}", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                "--cluster-port", str(free_port())))
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create",
             *[f"127.0.0.1:{s.port}" for s in topology.servers],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        _wait_until_each(topology.servers, _cluster_ready, "cluster node")
    except BaseException:
        topology.stop()
        raise
    topology.overrides = {"cache.redis_mode": "cluster",
                          "cache.redis_url": f"redis://127.0.0.1:{topology.servers[0].port}"}
    return topology


def _cluster_ready(client: redis.Redis) -> bool:
    info = client.cluster("info")
    nodes = client.cluster("nodes")
    return bool(info["cluster_state"] == "ok" and len(nodes) == 6
                and all(node["connected"] for node in nodes.values()))


def start_sentinel(directory: Path, password_file: Path,
                   sentinel_password_file: Path) -> Topology:
    """A master and a replica behind a password, watched by three Sentinels
    that require a password of their own."""
    password, sentinel_password = "master-secret", "sentinel-secret"
    password_file.write_text(password)
    sentinel_password_file.write_text(sentinel_password)
    topology = Topology()
    try:
        master = start_server(directory / "master", "--requirepass", password,
                              "--masterauth", password, password=password)
        topology.servers.append(master)
        topology.servers.append(start_server(
            directory / "replica", "--requirepass", password, "--masterauth", password,
            "--replicaof", "127.0.0.1", str(master.port), password=password))
        sentinels = []
        for index in range(3):
            config = (f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                      f"sentinel auth-pass {MASTER_NAME} {password}\n"
                      f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                      f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                      f"sentinel sentinel-pass {sentinel_password}\n"
                      f"requirepass {sentinel_password}\n")
            sentinels.append(start_server(directory / f"sentinel{index}", "--sentinel",
                                          config=config, password=sentinel_password))
        topology.servers += sentinels
        _wait_until_each([master], _replica_synced, "the replica to sync with master")
        _wait_until_each(sentinels, _sentinel_ready, "sentinel")
    except BaseException:
        topology.stop()
        raise
    topology.overrides = {
        "cache.redis_mode": "sentinel",
        "cache.redis_sentinels": [f"127.0.0.1:{s.port}" for s in sentinels],
        "cache.redis_sentinel_master": MASTER_NAME,
        "cache.redis_password_file": str(password_file),
        "cache.redis_sentinel_password_file": str(sentinel_password_file)}
    return topology


def _replica_synced(client: redis.Redis) -> bool:
    info = client.info("replication")
    return bool(info["connected_slaves"] == 1 and info["slave0"]["state"] == "online")


def _sentinel_ready(client: redis.Redis) -> bool:
    state = client.sentinel_master(MASTER_NAME)
    return bool(state["num-other-sentinels"] == 2 and state["num-slaves"] == 1)


def sentinel_master_port(topology: Topology) -> int:
    """The master's port according to a living Sentinel."""
    for server in topology.servers[2:]:
        client = server.client()
        try:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(port)
        except redis.RedisError:
            continue
        finally:
            client.close()
    raise AssertionError("no Sentinel answers")
