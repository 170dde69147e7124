"""The README agrees with what it describes: the example's routes, the roles, the compose file,
and shell commands that survive being pasted (quoted URLs)."""

from __future__ import annotations

import re

import yaml
from fastapi.routing import APIRoute

from affinity_queue import Role

from .app_support import REPO, env_for, load_example

README = (REPO / "README.md").read_text()
COMPOSE = (REPO / "docker-compose.yml").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_http_api_section_lists_every_route_of_the_example_with_a_curl(
    monkeypatch, make_settings
) -> None:
    example = load_example(monkeypatch, env_for(make_settings()))
    routes = {
        (method, r.path)
        for r in example.app.routes
        if isinstance(r, APIRoute)
        for method in r.methods
    }
    section = _section("The example's HTTP API")
    for method, path in routes:
        assert f"`{method} {path}" in section, (method, path)
        example_path = re.escape(path.split("{")[0]).rstrip("/")
        assert re.search(rf"curl .*'localhost:8000{example_path}", section), path


def test_every_curl_url_is_quoted_in_the_readme_and_the_compose_file() -> None:
    for text in (README, COMPOSE):
        for line in text.splitlines():
            if "curl" in line and "localhost:" in line:
                assert re.search(r"'localhost:\d+/", line), line


def test_the_roles_table_lists_every_role() -> None:
    section = _section("Roles and deployment")
    assert {m for m in re.findall(r"^\| `([A-Z]+)`", section, flags=re.M)} == {
        r.value for r in Role
    }


def test_the_readme_says_how_many_worker_containers_compose_starts() -> None:
    replicas = yaml.safe_load(COMPOSE)["services"]["worker"]["deploy"]["replicas"]
    words = {1: "one", 2: "two", 3: "three"}
    assert f"{words[replicas]} `WORKER` containers by default" in README
    assert f"{words[replicas]} worker containers (deploy.replicas)" in COMPOSE
