"""docker-compose.yml and the Dockerfiles, checked without a Docker engine: the Compose Specification's schema,
pinned images, health checks, start order, the services the docs name, and the container conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from comfyq.settings import PROJECT_ROOT

SCHEMA = PROJECT_ROOT / "tests" / "fixtures" / "compose" / "compose-spec.json"


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Compose refuses them, and so does this loader."""


def _no_duplicates(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [key.value for key, _ in node.value if key.value != "<<"]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.load((PROJECT_ROOT / "docker-compose.yml").read_text(), Loader=UniqueKeyLoader))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:10]]


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image or service.get("build"), name
        if image is None:
            continue
        image = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", image)  # the default of an overridable image
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image} is not pinned"
        if name != "comfyui":  # ComfyUI is the operator's image, pinned by digest in .env (docs/deployment.md)
            tag = image.rsplit(":", 1)[-1]
            assert re.search(r"\d+\.\d+|RELEASE\.\d{4}", tag), f"{name}: {image} is a moving tag, not a version"


def test_long_running_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue
        assert "healthcheck" in service and service["healthcheck"].get("test"), f"{name} has no health check"


def test_start_order_waits_for_what_each_service_needs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("webhook-api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if services[dependency].get("restart") == "no":
                assert rule["condition"] == "service_completed_successfully", f"{name} -> {dependency}"
            else:
                assert rule["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_profiles_and_secrets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["redis"]["profiles"] == ["redis"] and services["comfyui"]["profiles"] == ["gpu"]
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\s*:", line) and "${" not in line and "*" not in line:
            pytest.fail(f"a secret is written into docker-compose.yml: {line.strip()}")
    example = (PROJECT_ROOT / ".env.example").read_text()
    for variable in set(re.findall(r"\$\{([A-Z0-9_]+):\?", text)):
        assert re.search(rf"^{variable}=", example, re.MULTILINE), f".env.example lacks {variable}"


def test_every_service_the_docs_name_exists(compose: dict[str, Any]) -> None:
    table = (PROJECT_ROOT / "docs" / "deployment.md").read_text().split("## Services", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.MULTILINE))
    assert named == set(compose["services"]), named ^ set(compose["services"])
    for doc in (PROJECT_ROOT / "docs").glob("*.md"):
        for service in re.findall(r"docker compose (?:up -d --scale |logs -f |exec |stop |run -d --no-deps [^ ]+ )"
                                  r"([a-z0-9-]+)", doc.read_text()):
            assert service.split("=")[0] in compose["services"], f"{doc.name} names {service}"


@pytest.mark.parametrize("dockerfile", ["webhook-api/Dockerfile", "worker/Dockerfile"])
def test_dockerfiles_follow_the_conventions(dockerfile: str) -> None:
    text = (PROJECT_ROOT / dockerfile).read_text()
    assert re.match(r"FROM python:3\.11\.\d+-slim-bookworm\n", text)  # an exact version, never a floating tag
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    if dockerfile.startswith("worker"):
        assert 'CMD ["python", "worker.py"]' in text
        assert re.search(r'HEALTHCHECK .*CMD \["python", "worker.py", "healthcheck"\]', text)
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (PROJECT_ROOT / source).exists(), f"{dockerfile} copies missing {source}"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"


def test_schema_file_is_there() -> None:
    assert Path(SCHEMA).exists(), f"{SCHEMA} is missing"


def test_compose_imports_and_publishes_every_non_example_workflow(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["n8n-import"]["command"])
    for path in sorted((PROJECT_ROOT / "n8n-workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        published = workflow["id"] in command
        assert published != workflow["name"].endswith("(example)"), f"{path.name}: publish all but examples"
