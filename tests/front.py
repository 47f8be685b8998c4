"""The caching front (Varnish, issue 15) on loopback, started as the pod starts it.

The front container's arguments and environment come from
``deploy/kubernetes/base/deployment.yaml`` and its VCL files from the
ConfigMap the base generates (``front/avatarproxy.vcl``, ``front/backend.vcl``):
the very configuration deployed. Only where it points moves: each volume the
container mounts becomes a directory of its own, the listening port and the
service's port become free loopback ones. So a test of the front tests what
ships. For the tests and ``bench/`` (which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes" / "base"


def pod_spec() -> dict[str, Any]:
    deployment = yaml.safe_load((BASE / "deployment.yaml").read_text())
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    """A container of the pod, sidecars (init containers) included."""
    spec = pod_spec()
    return next(c for c in [*spec.get("initContainers", []), *spec["containers"]]
                if c["name"] == name)


def config_map_files(name: str) -> dict[str, Path]:
    """The files a generated ConfigMap of the base holds, by key."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"] if g["name"] == name)
    files = {}
    for entry in generator["files"]:
        key, _, path = entry.partition("=")
        files[key] = BASE / (path or key)
    return files


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise FileNotFoundError(f"{name} not found: tests/run installs Debian's varnish and "
                                "prometheus-varnish-exporter")
    return found


class _Places:
    """Where the pod's paths and ports are on this machine."""

    def __init__(self, directory: Path) -> None:
        spec = pod_spec()
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.paths: dict[str, Path] = {}
        for mount in container("front")["volumeMounts"]:
            local = directory / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            self.paths[mount["mountPath"]] = local
            config_map = volumes[mount["name"]].get("configMap")
            if config_map is not None:
                for key, source in config_map_files(config_map["name"]).items():
                    shutil.copyfile(source, local / key)

    def move(self, text: str) -> str:
        """``text`` with every mounted path replaced by its directory here."""
        for pod_path, local in sorted(self.paths.items(), key=lambda p: -len(p[0])):
            text = text.replace(pod_path, str(local))
        return text


@dataclass
class Front:
    """A running varnishd; ``counters()`` reads what its exporter would."""

    port: int
    workdir: Path  # its -n directory
    places: _Places
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counters(self) -> dict[str, int]:
        """varnishstat's counters by name (``MAIN.cache_hit``, ``VBE.boot.app.req``...)."""
        out = subprocess.run([binary("varnishstat"), "-n", str(self.workdir), "-1", "-j"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        data = json.loads(out)
        counters = data.get("counters", data)  # 7.x nests them; 6.x did not
        return {name: int(c["value"]) for name, c in counters.items()
                if isinstance(c, dict) and "value" in c}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # The cache file is as large as deployed: pytest keeps old temporary directories.
        for local in self.places.paths.values():
            shutil.rmtree(local, ignore_errors=True)


def _replace_once(pattern: str, replacement: str, text: str, what: str) -> str:
    result, count = re.subn(pattern, replacement, text, flags=re.DOTALL)
    if count != 1:
        raise ValueError(f"{what}: expected one match of {pattern!r}, found {count}")
    return result


def start_front(directory: Path, app_port: int, env: Mapping[str, str] | None = None,
                timeout: float = 90) -> Front:
    """varnishd as the front container runs it, in front of 127.0.0.1:``app_port``;
    ``env`` overrides the container's environment (AVATARPROXY_EDGE_MAX_AGE_SECONDS...)."""
    spec = container("front")
    places = _Places(directory)
    port = free_port()
    vcl_dir = next(places.paths[m["mountPath"]] for m in spec["volumeMounts"]
                   if m["name"] == "front-config")
    backend = vcl_dir / "backend.vcl"
    text = _replace_once(r'(backend app \{[^}]*\.port = ")\d+(")', rf"\g<1>{app_port}\g<2>",
                         backend.read_text(), "backend.vcl")
    backend.write_text(places.move(text))
    args = [places.move(a) for a in spec["args"]]
    listen = [i for i, a in enumerate(args) if re.fullmatch(r"http=:\d+(,.*)?", a)]
    if len(listen) != 1:
        raise ValueError(f"the front container listens on no one http=:PORT: {spec['args']}")
    args[listen[0]] = re.sub(r"^http=:\d+", f"http=127.0.0.1:{port}", args[listen[0]])
    leftover = [a for a in args if a.startswith("/") and not a.startswith(str(directory))]
    if leftover:
        raise ValueError(f"pod paths no volume of the front explains: {leftover}")
    workdir = Path(args[args.index("-n") + 1])
    variables = {**os.environ,
                 **{e["name"]: places.move(str(e["value"])) for e in spec.get("env", [])},
                 **(env or {})}
    log = directory / "varnishd.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary("varnishd"), *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=variables,
                                   start_new_session=True)
    front = Front(port, workdir, places, process, log)
    try:
        _wait_healthy(front, timeout)
    except BaseException:
        front.stop()
        raise
    return front


def _wait_healthy(front: Front, timeout: float) -> None:
    # varnishd compiles the VCL with gcc before it listens: seconds on a busy machine.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if front.process.poll() is not None:
            raise RuntimeError(f"varnishd exited:\n{front.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(front.base_url + "/front/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the front did not answer in {timeout} s:\n{front.log.read_text()[-3000:]}")


@dataclass
class Exporter:
    """prometheus-varnish-exporter as the front-metrics container runs it."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_exporter(front: Front, directory: Path) -> Exporter:
    spec = container("front-metrics")
    port = free_port()
    args = [front.places.move(a) for a in spec.get("args", [])]
    at = args.index("-web.listen-address") + 1
    args[at] = re.sub(r"^:\d+$", f"127.0.0.1:{port}", args[at])
    command = [binary(spec["command"][0]), *spec["command"][1:], *args]
    with (directory / "exporter.log").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return Exporter(port, process)
