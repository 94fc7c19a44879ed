"""Deployment files against the code: Dockerfile, compose, Prometheus, Grafana, Kubernetes and the entrypoint.

No Docker engine or cluster runs here, so these tests check what can be checked without one: every file
parses; every setting, route, port and path it names exists in the code; the Grafana dashboard and the
autoscaler use only metric names a live server exports; the entrypoint's choices, with a fake `python`
and for real. Overlays are rendered with `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.app import create_app
from service.client import VideoRewardClient
from service.settings import Settings
from tests.conftest import ROOT
from tests.media import write_video
from tests.service_helpers import ServerThread, free_port

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
OVERLAYS = ("cpu", "cuda", "npu", "demo")
DEVICE_RESOURCES = {"cuda": "nvidia.com/gpu", "npu": "huawei.com/Ascend910"}
ENV_NAME = re.compile(r"\bVIDEOREWARD_[A-Z0-9_]+\b")
METRIC_NAME = re.compile(r"\bvideoreward_[a-z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")

SETTINGS_ENV = {f"VIDEOREWARD_{name.upper()}": name for name in Settings.model_fields}


def entrypoint_env() -> set[str]:
    """VIDEOREWARD_* variables the entrypoint itself reads (not service settings)."""
    return {m for m in ENV_NAME.findall(ENTRYPOINT.read_text()) if m not in SETTINGS_ENV}


def known_env() -> set[str]:
    return set(SETTINGS_ENV) | entrypoint_env()


def deploy_texts() -> dict[str, str]:
    files = [ROOT / "Dockerfile", ROOT / "compose.yaml", *sorted(DEPLOY.rglob("*"))]
    return {str(f.relative_to(ROOT)): f.read_text() for f in files if f.is_file() and f.suffix in ("", ".yaml", ".yml", ".json", ".env", ".md", ".sh")}


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def resolve_defaults(value: Any) -> Any:
    """Compose interpolation with the defaults: ${X:-d} -> d, ${X} -> ''."""
    if not isinstance(value, str):
        return value
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def settings_from_env(env: dict[str, Any], checkpoint: Path) -> Settings:
    """Validate env-style settings exactly as the service would (strings in, lax parsing)."""
    kwargs: dict[str, Any] = {}
    for key, value in env.items():
        field = SETTINGS_ENV.get(key)
        if field is None or field == "checkpoint" or value in (None, ""):
            continue
        kwargs[field] = str(value)
    return Settings(checkpoint=checkpoint, **kwargs)


# --- a live server: the routes and the metric names that really exist ------------------------------
@pytest.fixture(scope="module")
def live(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Routes of the real app, and the /metrics scrape of a real server after scoring (one good, one broken)."""
    d = tmp_path_factory.mktemp("deploy-media")
    good = write_video(d / "good.mp4", num_frames=12, width=64, height=48, fps=8)
    broken = d / "broken.mp4"
    broken.write_text("not a video\n" * 20)
    app = create_app(Settings(checkpoint=tiny_ckpt, max_wait_ms=1))
    routes = {getattr(r, "path", None) for r in app.routes}
    with ServerThread(app) as srv, VideoRewardClient(srv.url) as client:
        result = client.score([good, broken], "a red circle moving left")
        assert result["results"][0]["error"] is None and result["results"][1]["error"] is not None
        client.score([good], "a red circle moving left")  # a cache hit
        text = httpx.get(srv.url + "/metrics", timeout=10).text
    exported: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            exported.add(name)
            if kind == "histogram":
                exported |= {name + "_bucket", name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return {"routes": routes, "exported": exported, "scrape": text}


def test_every_videoreward_env_var_in_deploy_files_is_a_setting_or_read_by_the_entrypoint() -> None:
    extra = entrypoint_env()
    assert extra == {"VIDEOREWARD_DEMO", "VIDEOREWARD_DEMO_DIR"}, f"the entrypoint reads unexpected variables {extra}"
    unknown = {(path, name) for path, text in deploy_texts().items() for name in ENV_NAME.findall(text) if name not in known_env()}
    assert not unknown, f"these VIDEOREWARD_* names are neither settings nor entrypoint variables: {sorted(unknown)}"


# --- Dockerfile ----------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def dockerfile_args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("device", ["cpu", "cuda", "npu"])
def test_dockerfile_bases_are_pinned_by_tag_for_every_device(device: str) -> None:
    values = {**dockerfile_args(), "DEVICE": device}
    stages: set[str] = set()
    for keyword, rest in dockerfile_instructions():
        if keyword != "FROM":
            continue
        parts = substitute(rest, values).split()
        image = parts[0]
        if image not in stages:  # an external image: pinned by a tag that is not "latest", or by digest
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert "@sha256:" in image or (tag and tag != "latest"), f"base image {image!r} is not pinned by tag"
            assert "$" not in image, f"unresolved build arg in FROM {rest!r}"
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    assert {"base-cpu", "base-cuda", "base-npu", "builder", "runtime"} <= stages


def test_dockerfile_multi_stage_non_root_healthcheck_no_secrets(live: dict[str, Any]) -> None:
    ins = dockerfile_instructions()
    keywords = [k for k, _ in ins]
    assert keywords.count("FROM") >= 5 and any(k == "COPY" and "--from=builder" in a for k, a in ins), "not multi-stage"
    # the last USER of the final stage is not root
    last_stage = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    users = [a for k, a in ins[last_stage:] if k == "USER"]
    args = {**dockerfile_args(), **{a.partition("=")[0]: a.partition("=")[2] for k, a in ins[last_stage:] if k == "ARG"}}
    assert users, "the runtime stage has no USER"
    user = substitute(users[-1], args).split(":")[0]
    assert user not in ("root", "0", ""), f"runs as {user!r}"
    # HEALTHCHECK probes a route the app has, on the port the image configures and exposes
    health = [a for k, a in ins if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "/healthz" in live["routes"]
    env = " ".join(a for k, a in ins if k == "ENV")
    port = re.search(r"VIDEOREWARD_PORT=(\d+)", env)
    assert port and [a for k, a in ins if k == "EXPOSE"] == [port.group(1)]
    assert "VIDEOREWARD_HOST=0.0.0.0" in env, "in a container the service must listen on all interfaces"
    # no secrets: no ENV/ARG with a key/token/password/secret name carrying a value
    for keyword, rest in ins:
        if keyword in ("ENV", "ARG"):
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", rest):
                if re.search(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", name, re.I):
                    pytest.fail(f"{keyword} {name}={value}: secrets go in at run time, never into the image")
    # the entrypoint is the script in the repo, copied and executable
    assert any(k == "COPY" and "deploy/entrypoint.sh" in a and "--chmod=0755" in a for k, a in ins)
    assert ENTRYPOINT.stat().st_mode & 0o111


def dockerignore_excluded(path: str) -> bool:
    """Docker's .dockerignore rules: last match wins, '!' re-includes, a pattern matching a parent matches."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rx = regex(line.lstrip("!").strip("/"))
        if any(rx.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_sends_the_sources_and_never_weights_or_envs() -> None:
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excluded(src.rstrip("/")), f"COPY {src} is excluded by .dockerignore"
    for path in ("model/scorer.py", "service/app.py", "training/bulk.py", "pyproject.toml", "deploy/entrypoint.sh"):
        assert not dockerignore_excluded(path), path
    for path in (".venv/bin/python", ".git/config", "checkpoints/tiny/model.safetensors", "model/weights.safetensors",
                 "tests/test_deploy.py", "runs/x/model.pth", ".env", "service/.env", "model/__pycache__/a.pyc"):
        assert dockerignore_excluded(path), f"{path} would be sent to the Docker build"


# --- compose ---------------------------------------------------------------------------------------
def compose_files() -> list[Path]:
    return [ROOT / "compose.yaml", *sorted((DEPLOY / "compose").glob("*.yaml"))]


def test_compose_service_prometheus_grafana(live: dict[str, Any], tiny_ckpt: Path) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"videoreward", "prometheus", "grafana"} <= set(services)
    svc = services["videoreward"]
    env = svc["environment"]
    # healthy only once ready
    test = " ".join(svc["healthcheck"]["test"])
    assert "/readyz" in test and "/readyz" in live["routes"]
    port = int(env["VIDEOREWARD_PORT"])
    assert f":{port}/readyz" in test
    assert any(str(p).endswith(f":{port}") for p in svc["ports"])
    assert svc["build"]["context"] == "." and (ROOT / "Dockerfile").is_file()
    # the settings it passes validate as the service would read them
    resolved = {k: resolve_defaults(v) for k, v in env.items()}
    settings = settings_from_env(resolved, tiny_ckpt)
    assert settings.host == "0.0.0.0" and settings.port == port
    grace = float(str(svc["stop_grace_period"]).rstrip("s"))
    assert grace > settings.drain_timeout_s, "compose must wait longer than the drain before killing"
    # Prometheus scrapes that service and port, on a route that exists
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and "/metrics" in live["routes"]
    assert job["static_configs"][0]["targets"] == [f"videoreward:{port}"]
    # Grafana: the datasource points at the Prometheus service; the dashboard folder is provisioned
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/videoreward.yaml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2][::-1] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert provider["options"]["path"] in mounts and (ROOT / mounts[provider["options"]["path"]] / "videoreward.json").is_file()
    # pinned images
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: p.name)
def test_compose_files_reference_existing_paths_and_valid_settings(path: Path, tiny_ckpt: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            src = str(volume).split(":")[0]
            if src.startswith("./"):  # a literal path in the repo (interpolated ones are the user's data)
                assert (ROOT / src).exists(), f"{path.name}: {name} mounts {src}, which does not exist"
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{path.name}: use the mapping form for environment"
        for key in env:
            if key.startswith("VIDEOREWARD_"):
                assert key in known_env(), f"{path.name}: {key} is not a setting"
        if name == "videoreward":
            settings_from_env({k: resolve_defaults(v) for k, v in env.items()}, tiny_ckpt)
    for var in INTERPOLATION.findall(path.read_text()):
        if var[0].startswith("VIDEOREWARD_"):
            assert var[0] in known_env(), f"{path.name}: ${{{var[0]}}} is not a setting"


def test_compose_tensor_parallel_override_runs_tp_on_as_many_devices() -> None:
    tp = yaml.safe_load((DEPLOY / "compose" / "tp.yaml").read_text())["services"]["videoreward"]
    assert tp["environment"]["VIDEOREWARD_TP"].startswith("${VIDEOREWARD_TP:?")
    assert "shm_size" in tp
    cuda = yaml.safe_load((DEPLOY / "compose" / "cuda.yaml").read_text())["services"]["videoreward"]
    device = cuda["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["count"] == "${VIDEOREWARD_TP:-1}" and device["driver"] == "nvidia"
    assert cuda["build"]["args"]["DEVICE"] == "cuda" and cuda["environment"]["VIDEOREWARD_DEVICE"] == "cuda"
    npu = yaml.safe_load((DEPLOY / "compose" / "npu.yaml").read_text())["services"]["videoreward"]
    assert npu["build"]["args"]["DEVICE"] == "npu" and npu["environment"]["VIDEOREWARD_DEVICE"] == "npu"
    # the entrypoint turns VIDEOREWARD_TP > 1 into torchrun (tested below)
    assert "torchrun" in ENTRYPOINT.read_text()


# --- Grafana dashboard and autoscaler metrics against a live /metrics ------------------------------
def test_dashboard_uses_only_exported_metrics_and_covers_the_issue(live: dict[str, Any]) -> None:
    dash = json.loads((DEPLOY / "grafana/dashboards/videoreward.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [json.dumps(v.get("query")) for v in dash["templating"]["list"]]
    used = {m for e in exprs for m in METRIC_NAME.findall(e)}
    missing = used - live["exported"]
    assert not missing, f"the dashboard uses metrics the service does not export: {sorted(missing)}"
    # what the issue asks for
    for needed in (
        "videoreward_requests_total",  # request rate, errors by status
        "videoreward_request_latency_seconds_bucket",  # p50 / p99
        "videoreward_queue_depth",
        "videoreward_batch_size_items_bucket",
        "videoreward_decode_seconds_sum",
        "videoreward_forward_seconds_sum",
        "videoreward_item_errors_total",  # errors by code
        "videoreward_cache_hits_total",
        "videoreward_cache_misses_total",
    ):
        assert needed in used, f"the dashboard has no panel on {needed}"
    quantiles = " ".join(exprs)
    assert "histogram_quantile(0.5" in quantiles and "histogram_quantile(0.99" in quantiles
    # panels reference the templated data source; ids are unique
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_autoscaler_metrics_exist_and_match_the_adapter_rules(live: dict[str, Any]) -> None:
    values = yaml.safe_load((K8S / "monitoring/prometheus-adapter-values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert series in live["exported"], f"the adapter rule reads {series}, which the service does not export"
        assert re.search(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        served[rule["name"]["as"]] = series
    hpa = load_yaml_docs(K8S / "base/horizontalpodautoscaler.yaml")[0]
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert "videoreward_queue_depth" in names
    for name in names:
        assert name in served, f"the HPA asks for {name}, which no adapter rule serves"


# --- Kubernetes ----------------------------------------------------------------------------------
def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("kfile", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomizations_reference_existing_files_and_base_resources(kfile: Path) -> None:
    k = yaml.safe_load(kfile.read_text())
    here = kfile.parent
    for res in k.get("resources", []):
        target = (here / res).resolve()
        assert target.exists(), f"{kfile}: resource {res} does not exist"
        assert target.is_relative_to(K8S), f"{kfile}: {res} leaves deploy/k8s"
    for gen in k.get("configMapGenerator", []):
        for env_file in gen.get("envs", []):
            assert (here / env_file).is_file()
    base_objects = {(d["kind"], d["metadata"]["name"]) for f in sorted((K8S / "base").glob("*.yaml"))
                    if f.name != "kustomization.yaml" for d in load_yaml_docs(f)}
    for patch in k.get("patches", []):
        doc = load_yaml_docs(here / patch["path"])[0]
        assert (doc["kind"], doc["metadata"]["name"]) in base_objects, f"{kfile}: patch {patch['path']} targets nothing"
    for gen in k.get("configMapGenerator", []):
        if gen.get("behavior") == "merge":
            assert gen["name"] == "videoreward-config"
    if here.parent.name == "overlays":
        assert k.get("resources") in (["../../base"], ["../cpu"]), f"{kfile}: an overlay builds on the base, never a copy"
    for rep in k.get("replacements", []):
        assert (rep["source"]["kind"], rep["source"]["name"]) == ("ConfigMap", "videoreward-config")


def base_config_env() -> dict[str, str]:
    lines = (K8S / "base/config.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_k8s_base_manifests_against_the_code(live: dict[str, Any], tiny_ckpt: Path) -> None:
    docs = {d["kind"]: d for f in sorted((K8S / "base").glob("*.yaml")) if f.name != "kustomization.yaml" for d in load_yaml_docs(f)}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceAccount"} <= set(docs)
    env = base_config_env()
    assert set(env) <= known_env(), set(env) - known_env()
    settings = settings_from_env(env, tiny_ckpt)
    check_rendered_deployment(docs, env, settings, live["routes"])


def check_rendered_deployment(docs: dict[str, Any], env: dict[str, str], settings: Settings, routes: set[str]) -> None:
    """Checks shared by the base and each rendered overlay."""
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "videoreward"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] in ports, f"{probe}: {get}"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + settings.drain_timeout_s
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes and int(annotations["prometheus.io/port"]) == settings.port
    service = docs["Service"]["spec"]["ports"]
    assert [p["targetPort"] for p in service] == ["http"]
    netpol = docs["NetworkPolicy"]["spec"]
    assert netpol["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in netpol["ingress"] for p in rule["ports"]] == ["http"], "only the service port is open"
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert "replicas" not in docs["Deployment"]["spec"], "the HPA owns replicas"
    selector = docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/cache", "/tmp"} <= mounts
    if env.get("VIDEOREWARD_CHECKPOINT"):
        assert any(env["VIDEOREWARD_CHECKPOINT"].startswith(m + "/") for m in mounts), "the checkpoint is not on a volume"
    if env.get("VIDEOREWARD_DEMO_DIR"):
        assert any(env["VIDEOREWARD_DEMO_DIR"].startswith(m + "/") for m in mounts)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlays_render_and_agree_with_the_code(overlay: str, live: dict[str, Any], tiny_ckpt: Path) -> None:
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    docs = {d["kind"]: d for d in rendered}
    config = docs["ConfigMap"]
    env = {k: str(v) for k, v in config["data"].items()}
    assert set(env) <= known_env(), set(env) - known_env()
    settings = settings_from_env(env, tiny_ckpt)
    check_rendered_deployment(docs, env, settings, live["routes"])
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"], "the pods read the generated ConfigMap"
    device = "cpu" if overlay == "demo" else overlay
    assert container["image"] == f"videoreward-serve:{device}" and settings.device == device
    resource = DEVICE_RESOURCES.get(device)
    if resource:  # one TP group per pod: as many devices as ranks
        assert container["resources"]["limits"][resource] == env["VIDEOREWARD_TP"]
    else:
        assert not set(container["resources"].get("limits", {})) & set(DEVICE_RESOURCES.values())
    if overlay == "demo":
        assert env["VIDEOREWARD_DEMO"] == "1" and env["VIDEOREWARD_CHECKPOINT"] == ""
    else:
        assert env["VIDEOREWARD_DEMO"] == "0", "production overlays fail fast on a missing checkpoint"


# --- the entrypoint --------------------------------------------------------------------------------
FAKE_PYTHON = """#!/usr/bin/env bash
printf 'python %s\\n' "$*" >> "$FAKE_LOG"
if [[ $1 == -c ]]; then exit "${FAKE_DEMO_RC:-1}"; fi          # the training.demo availability check
if [[ $1 == -m && $2 == model.tiny ]]; then mkdir -p "$3" && touch "$3/config.json" "$3/reward_config.json"; fi
if [[ $1 == -m && $2 == training.demo ]]; then mkdir -p "$4/checkpoint" && touch "$4/checkpoint/config.json" "$4/checkpoint/reward_config.json"; fi
exit 0
"""
FAKE_TORCHRUN = """#!/usr/bin/env bash
printf 'torchrun %s\\n' "$*" >> "$FAKE_LOG"
"""


def make_checkpoint_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "reward_config.json").write_text("{}")
    return path


@pytest.fixture
def fake_entry(tmp_path: Path):
    """Run the entrypoint with fake python/torchrun that record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("python", FAKE_PYTHON), ("torchrun", FAKE_TORCHRUN)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(env: dict[str, str], *args: str) -> tuple[int, list[str], str]:
        log.write_text("")
        full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "FAKE_LOG": str(log),
                "VIDEOREWARD_DEMO_DIR": str(tmp_path / "cache" / "demo"), **env}
        proc = subprocess.run(["bash", str(ENTRYPOINT), *args], env=full, capture_output=True, text=True, timeout=30)
        return proc.returncode, log.read_text().splitlines(), proc.stderr

    run.tmp = tmp_path  # type: ignore[attr-defined]
    return run


def test_entrypoint_serves_a_mounted_checkpoint(fake_entry) -> None:
    ckpt = make_checkpoint_dir(fake_entry.tmp / "models" / "ckpt")
    rc, calls, err = fake_entry({"VIDEOREWARD_CHECKPOINT": str(ckpt), "VIDEOREWARD_DEMO": "0"}, "--max-batch-size", "4")
    assert rc == 0, err
    assert calls == [f"python -m service --checkpoint {ckpt} --max-batch-size 4"]


def test_entrypoint_refuses_a_missing_mount_without_demo(fake_entry) -> None:
    rc, calls, err = fake_entry({"VIDEOREWARD_CHECKPOINT": "/models/nowhere", "VIDEOREWARD_DEMO": "0"})
    assert rc == 2 and calls == []
    assert "/models/nowhere does not exist" in err and "mount" in err
    rc, calls, err = fake_entry({"VIDEOREWARD_DEMO": "0"})
    assert rc == 2 and calls == [] and "set VIDEOREWARD_CHECKPOINT" in err


def test_entrypoint_refuses_a_directory_that_is_not_a_checkpoint(fake_entry) -> None:
    empty = fake_entry.tmp / "models" / "empty"
    empty.mkdir(parents=True)
    (empty / "model.pth").write_text("")
    rc, calls, err = fake_entry({"VIDEOREWARD_CHECKPOINT": str(empty)})  # even with the demo enabled
    assert rc == 2 and calls == []
    assert "not a serving checkpoint" in err and "model.pth" in err


def test_entrypoint_builds_the_demo_once_and_falls_back_to_tiny_loudly(fake_entry) -> None:
    demo = fake_entry.tmp / "cache" / "demo"
    rc, calls, err = fake_entry({})
    assert rc == 0, err
    assert calls[1].startswith(f"python -m model.tiny {demo}/.build.") and "TINY RANDOM" in err
    assert calls[-1] == f"python -m service --checkpoint {demo}/checkpoint"
    assert (demo / "checkpoint" / "reward_config.json").is_file() and not list(demo.glob(".build.*"))
    rc, calls, err = fake_entry({})  # the next start reuses it
    assert rc == 0 and calls == [f"python -m service --checkpoint {demo}/checkpoint"]


def test_entrypoint_uses_training_demo_when_installed(fake_entry) -> None:
    demo = fake_entry.tmp / "cache" / "demo"
    rc, calls, err = fake_entry({"FAKE_DEMO_RC": "0", "VIDEOREWARD_CHECKPOINT": "/models/not-mounted"})
    assert rc == 0, err
    assert "does not exist; serving the DEMO" in err
    assert re.fullmatch(rf"python -m training\.demo --out {re.escape(str(demo))}/\.build\.\w+ --quick", calls[1])
    assert calls[-1] == f"python -m service --checkpoint {demo}/checkpoint"


def test_entrypoint_runs_tensor_parallel_under_torchrun(fake_entry) -> None:
    ckpt = make_checkpoint_dir(fake_entry.tmp / "models" / "ckpt")
    rc, calls, err = fake_entry({"VIDEOREWARD_CHECKPOINT": str(ckpt), "VIDEOREWARD_TP": "4"})
    assert rc == 0, err
    assert calls == [f"torchrun --standalone --nnodes 1 --nproc-per-node 4 -m service --checkpoint {ckpt} --tp 4"]
    rc, calls, err = fake_entry({"VIDEOREWARD_CHECKPOINT": str(ckpt), "VIDEOREWARD_TP": "two"})
    assert rc == 2 and calls == [] and "VIDEOREWARD_TP must be a positive integer" in err


def test_entrypoint_runs_other_commands_as_given(fake_entry) -> None:
    rc, calls, _ = fake_entry({}, "python", "-m", "training.bulk", "--help")
    assert rc == 0 and calls == ["python -m training.bulk --help"]


def test_entrypoint_execs_the_real_service_which_drains_on_sigterm(tiny_ckpt: Path, tmp_path: Path) -> None:
    """As in the container: the entrypoint execs the service (so SIGTERM reaches it), which exits 0."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "VIDEOREWARD_CHECKPOINT": str(tiny_ckpt),
           "VIDEOREWARD_DEMO": "0", "VIDEOREWARD_HOST": "127.0.0.1", "VIDEOREWARD_PORT": str(port),
           "VIDEOREWARD_DRAIN_TIMEOUT_S": "5"}
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the service did not become ready")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-m" in cmdline and b"service" in cmdline and b"bash" not in cmdline[0], "the entrypoint did not exec"
        assert "videoreward_ready 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        assert "exec: python -m service --checkpoint" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
