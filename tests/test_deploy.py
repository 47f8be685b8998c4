"""deploy/: manifests render and validate offline, the Dockerfile lints, the
alert rules pass promtool, and the built wheel runs from a clean venv."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from loopback import free_port

from avatarproxy.initials import DEBIAN_CJK_FONT

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/workload-identity",
                  # worked examples of adapting to a cluster (docs/operations.md, "Deploying")
                  "overlays/example-azure-cache-for-redis", "overlays/example-azure-managed-redis",
                  "overlays/example-cluster-names", "overlays/example-gke-cloud-dns",
                  "overlays/example-without-front"]
K8S_VERSION = "1.30.0"
CRDS = {"ServiceMonitor": "servicemonitor", "PrometheusRule": "prometheusrule"}


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} not found: tests/run installs it", pytrace=False)
    return found


def render(kustomization: str) -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(KUSTOMIZE / kustomization)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders_valid_objects(kustomization: str) -> None:
    objects = render(kustomization)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor",
            "PrometheusRule", "ServiceAccount"} <= kinds
    for obj in objects:
        if obj["kind"] in CRDS:
            schema = json.loads((KUSTOMIZE / "crds" / f"{CRDS[obj['kind']]}.schema.json")
                                .read_text())
            jsonschema.validate(obj, schema)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_deployment_is_probed_hardened_and_drained() -> None:
    deployment = next(o for o in render("base") if o["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    # Avatars and probes on one port (for the front, on loopback), /metrics on
    # its own (server.metrics_port).
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "app": 8081, "metrics": 9090}
    assert {container[p]["httpGet"]["port"] for p in
            ("livenessProbe", "readinessProbe", "startupProbe")} == {"app"}
    monitor = next(o for o in render("base") if o["kind"] == "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        ("metrics", "/metrics"), ("front-metrics", "/metrics")]
    assert {"requests", "limits"} <= set(container["resources"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    config = next(o for o in render("base") if o["kind"] == "ConfigMap")
    assert "[logging]" in config["data"]["config.toml"]


def _hardened(container: dict[str, Any]) -> bool:
    security = container["securityContext"]
    return (security["readOnlyRootFilesystem"] is True
            and security["allowPrivilegeEscalation"] is False
            and security["capabilities"]["drop"] == ["ALL"])


def _size(text: str) -> int:
    """A Kubernetes quantity or a varnishd size (256M) in bytes."""
    match = re.fullmatch(r"(\d+)([KMG]i?)?", text)
    assert match, text
    number, unit = match.groups()
    return int(number) * 1024 ** " KMG".index((unit or " ")[0])


def test_the_front_is_a_hardened_native_sidecar_with_its_cache_on_a_bounded_emptydir() -> None:
    objects = render("base")
    spec = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    front = next(c for c in spec["initContainers"] if c["name"] == "front")
    # Starts before the service, stops after it, restarted on its own.
    assert front["restartPolicy"] == "Always"
    assert {p["name"]: p["containerPort"] for p in front["ports"]} == {"http": 8080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Answered by the front itself: the service starts after its startup probe.
        assert front[probe]["httpGet"] == {"path": "/front/healthz", "port": "http"}, probe
    assert _hardened(front) and spec["securityContext"]["runAsNonRoot"] is True
    assert {"requests", "limits"} <= set(front["resources"])
    env = {e["name"]: e["value"] for e in front["env"]}
    assert env["AVATARPROXY_EDGE_MAX_AGE_SECONDS"] == "60"  # edge.max_age_seconds
    # Everything it writes is on an emptyDir with a size limit, the cache file within it.
    volumes = {v["name"]: v for v in spec["volumes"]}
    written = [m for m in front["volumeMounts"] if not m.get("readOnly")]
    assert all(volumes[m["name"]]["emptyDir"]["sizeLimit"] for m in written)
    cache = next(m for m in written if m["name"] == "front-cache")
    storage = front["args"][front["args"].index("-s") + 1].split(",")
    assert storage[0] == "file" and storage[1].startswith(cache["mountPath"] + "/")
    assert _size(storage[2]) < _size(volumes["front-cache"]["emptyDir"]["sizeLimit"])
    # Its VCL is the ConfigMap the base generates from deploy/kubernetes/base/front.
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] == volumes["front-config"]["configMap"]["name"])
    assert config_map["data"]["avatarproxy.vcl"] == (
        KUSTOMIZE / "base" / "front" / "avatarproxy.vcl").read_text()
    exporter = next(c for c in spec["containers"] if c["name"] == "front-metrics")
    assert _hardened(exporter) and "readinessProbe" not in exporter


def test_the_without_front_component_serves_from_the_service_alone() -> None:
    objects = render("overlays/example-without-front")
    spec = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert not spec.get("initContainers")
    assert [c["name"] for c in spec["containers"]] == ["avatarproxy"]
    container = spec["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8080, "metrics": 9090}
    assert {"name": "AVATARPROXY_SERVER_PORT", "value": "8080"} in container["env"]
    assert not [v for v in spec["volumes"] if v["name"].startswith("front")]
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert not [o for o in objects if o["metadata"]["name"].startswith("avatarproxy-front")]


def test_dev_adds_one_redis_and_workload_identity_drops_the_secret() -> None:
    dev = render("overlays/dev")
    assert [o["metadata"]["name"] for o in dev if o["kind"] == "Deployment"].count(
        "avatarproxy-redis") == 1
    wi = render("overlays/workload-identity")
    assert "Secret" not in {o["kind"] for o in wi}
    account = next(o for o in wi if o["kind"] == "ServiceAccount")
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    pod = next(o for o in wi if o["kind"] == "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert not pod["spec"]["containers"][0].get("env")  # the webhook injects AZURE_*


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "front.Dockerfile"])
def test_the_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "deploy" / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "deploy" / dockerfile).read_text()
    assert "HEALTHCHECK" not in text.replace("no HEALTHCHECK", "")
    assert "USER 10001" in text
    # The service's needs, or the very Debian packages the front's tests run.
    if dockerfile == "Dockerfile":
        assert "libfribidi0" in text
        # Where avatar.cjk_font = "auto" looks, with the font's licence next to it.
        assert f"COPY --from=fonts {DEBIAN_CJK_FONT} {DEBIAN_CJK_FONT.parent}/" in text
        assert "COPY --from=fonts /usr/share/doc/fonts-noto-cjk/copyright" in text
    else:
        assert "varnish=7.1" in text and "prometheus-varnish-exporter" in text


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def runbook_setting() -> str:
    """The runbook address operators set: base/runbooks.yaml's url."""
    return str(yaml.safe_load((KUSTOMIZE / "base" / "runbooks.yaml").read_text())["data"]["url"])


def runbook_page_anchors() -> set[str]:
    """The anchors GitHub (and GitLab) give the headings of docs/operations.md."""
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "operations.md").read_text(),
                          re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    # The rules as kustomize renders them (runbook addresses included), against
    # tests/alerts.test.yaml: input series and the alerts expected from them.
    rule = next(o for o in render("base") if o["kind"] == "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    unit_tests = (ROOT / "tests" / "alerts.test.yaml").read_text()
    (tmp_path / "alerts.test.yaml").write_text(unit_tests.replace("RUNBOOKS", runbook_setting()))
    check = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "rules.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run([tool("promtool"), "test", "rules", "alerts.test.yaml"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is tested both ways: firing, and quiet where it would be wrong.
    cases = [case for test in yaml.safe_load(unit_tests)["tests"]
             for case in test["alert_rule_test"]]
    for alert in alert_rules([rule]):
        assert {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert["alert"]} == {
            True, False}, alert["alert"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_alert_links_its_runbook_at_the_address_operators_set(kustomization: str) -> None:
    setting = runbook_setting()
    assert setting.startswith("https://")
    anchors = runbook_page_anchors()
    for alert in alert_rules(render(kustomization)):
        url = alert["annotations"]["runbook_url"]
        # Absolute: Alertmanager and Grafana show it as it is.
        assert url == f"{setting}#runbook-{alert['alert'].lower()}", url
        assert url.split("#", 1)[1] in anchors, url


def test_the_documented_recipe_points_the_runbook_links_elsewhere(tmp_path: Path) -> None:
    monitoring = (ROOT / "docs" / "operations.md").read_text().split("\n## Monitoring\n", 1)[1]
    recipe = re.search(r"```yaml\n(# kustomization.yaml of your overlay.*?)```", monitoring,
                       re.DOTALL)
    assert recipe is not None, "docs/operations.md, Monitoring: the runbook address recipe"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(  # kustomize takes no absolute path
        recipe.group(1).replace("../../base", os.path.relpath(KUSTOMIZE / "base", overlay)))
    out = subprocess.run([tool("kubectl"), "kustomize", str(overlay)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    wanted = "https://git.contoso.com/platform/avatarproxy/-/blob/v0.1.0/docs/operations.md"
    assert [a["annotations"]["runbook_url"].split("#")[0] for a in alert_rules(objects)] == [
        wanted] * len(alert_rules(objects))
    assert "avatarproxy-runbooks" not in out  # read by kustomize, never applied


def test_the_wheel_installs_into_a_clean_venv_and_serves(tmp_path: Path) -> None:
    # What the Dockerfile does, without a container engine. The dependencies
    # come from the test venv through a .pth (resolving them again from the
    # index takes over a minute); avatarproxy itself only from the wheel.
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, timeout=300)
    # No PYTHONPATH in the clean venv: a checkout on it would shadow the wheel,
    # and pip would take it for avatarproxy already installed.
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("AVATARPROXY_")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "--no-deps", *map(str, wheels.glob("*.whl"))], check=True, timeout=300,
                   env=env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz-deps.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")))
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import avatarproxy; print(avatarproxy.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path,
                           env=env).stdout
    assert where.startswith(str(site)), where
    assert (site / "avatarproxy" / "fonts" / "DejaVuSans-Bold.ttf").is_file()
    port = free_port()
    env["AVATARPROXY_SERVER_DRAIN_SECONDS"] = "0"
    process = subprocess.Popen([str(venv / "bin" / "avatarproxy"), "demo", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               cwd=tmp_path)
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the demo prints its URLs once it is set up
            if b"Running on" in line:
                break
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/avatar/adele.vance@contoso.com/48") as resp:
            assert resp.headers["X-Avatar-Source"] == "photo"
        with urllib.request.urlopen(base + "/readyz") as resp:
            assert json.load(resp)["ready"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_the_dashboard_queries_only_metrics_the_service_exports() -> None:
    from prometheus_client import REGISTRY

    from avatarproxy import metrics  # registers the metrics

    exported = {family.name + suffix for family in REGISTRY.collect()
                for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    # and those created where they mean something (a certificate, Redis)
    exported |= {m.name for m in vars(metrics).values() if isinstance(m, metrics.GaugeOnFirstUse)}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "avatarproxy.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"avatarproxy_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported
