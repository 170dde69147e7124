"""The deployment files agree with QueueSettings, so they cannot drift from the code."""

from __future__ import annotations

import re

import pytest
import yaml

from affinity_queue import QueueSettings

from .app_support import REPO, SETTINGS_ENV


def _assignments(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE)


def test_env_example_lists_every_variable_once_with_its_default(monkeypatch) -> None:
    text = (REPO / ".env.example").read_text()
    names = [name for name, _ in _assignments(text)]
    assert sorted(names) == sorted(SETTINGS_ENV)
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    from_file = QueueSettings(_env_file=REPO / ".env.example")
    defaults = QueueSettings(_env_file=None)
    # Empty REDIS_URL / REDIS_PASSWORD mean "none": the same connection as the defaults.
    assert from_file.resolved_redis_url == defaults.resolved_redis_url
    for field in QueueSettings.model_fields:
        if field not in ("redis_url", "redis_password"):
            assert getattr(from_file, field) == getattr(defaults, field), field


def test_compose_runs_redis_with_aof_one_scheduler_workers_and_the_api() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    roles = {
        name: s["environment"].get("APP_ROLE") for name, s in services.items() if name != "redis"
    }
    assert roles == {"scheduler": "SCHEDULER", "worker": "WORKER", "api": "PRODUCER"}
    for name in roles:
        assert set(services[name]["environment"]) <= SETTINGS_ENV, name
        # Only what must differ per service (or points at the compose Redis) is set here.
        assert set(services[name]["environment"]) <= {"APP_ROLE", "REDIS_URL", "WORKER_COUNT"}
    grace_s = int(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert grace_s * 1000 > QueueSettings(_env_file=None).shutdown_grace_period_ms


@pytest.mark.parametrize("line", (REPO / "Procfile").read_text().splitlines())
def test_procfile_processes_use_known_variables(line: str) -> None:
    if not line or line.startswith("#"):
        return
    _, command = line.split(": ", 1)
    for name in re.findall(r"\b([A-Z][A-Z0-9_]*)=", command):
        assert name in SETTINGS_ENV, name
    assert "example_app.main:" in command


def test_every_service_reads_the_env_file_that_env_example_documents() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        # Optional, so that `docker compose up` works before anyone copied .env.example.
        assert service.get("env_file") == [{"path": ".env", "required": False}], name
        for value in service["environment"].values():
            # ${VAR:-default} lets .env (read by Compose for interpolation too) override it.
            assert str(value).startswith("${") or value in ("SCHEDULER", "WORKER", "PRODUCER"), (
                name,
                value,
            )
    header = (REPO / ".env.example").read_text().split("\n\n", 1)[0]
    assert "cp .env.example .env" in header and "env_file" in header
