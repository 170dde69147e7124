"""TLS: certificates made here with the openssl CLI, redis-server with ``--tls-port`` asking for
client certificates; a queue runs over rediss://, and a wrong CA or host fails naming TLS."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from affinity_queue import AffinityQueue, QueueSettings, QueueUnavailableError

from ..redis_server import free_port
from .servers import Proc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return key, cert


def signed(d: Path, name: str, authority: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (d / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName={san}\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(authority[1]), "-CAkey",
            str(authority[0]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
            "-out", str(cert))  # fmt: skip
    return key, cert


@dataclass
class Tls:
    dir: Path
    ca: Path
    other_ca: Path
    client_key: Path
    client_cert: Path
    server: Proc
    port: int

    def settings(self, host: str = "127.0.0.1", **extra: Any) -> QueueSettings:
        values: dict[str, Any] = {
            "redis_url": f"rediss://{host}:{self.port}/0",
            "redis_ssl_ca_certs": str(self.ca),
            "redis_ssl_certfile": str(self.client_cert),
            "redis_ssl_keyfile": str(self.client_key),
            "pending_queue_name": "tls-q",
            "worker_queue_prefix": "tls-q-wq",
            "worker_state_prefix": "tls-q-ws",
            "scheduler_interval_ms": 200,
            "heartbeat_interval_ms": 300,
            "election_lock_ttl_ms": 2000,
            **extra,
        }
        return QueueSettings(_env_file=None, **values)


@pytest.fixture(scope="module")
def tls() -> Iterator[Tls]:
    d = Path(tempfile.mkdtemp(prefix="aq-tls-"))
    authority = ca(d, "test-ca")
    _, other = ca(d, "other-ca")
    server_key, server_cert = signed(d, "server", authority, "IP:127.0.0.1")
    client_key, client_cert = signed(d, "client", authority, "DNS:client")
    port = free_port()
    server = Proc(["--save", "", "--tls-port", str(port), "--tls-cert-file", str(server_cert),
                   "--tls-key-file", str(server_key), "--tls-ca-cert-file", str(authority[1]),
                   "--tls-auth-clients", "yes"]).start()  # fmt: skip
    yield Tls(d, authority[1], other, client_key, client_cert, server, port)
    server.cleanup()
    shutil.rmtree(d, ignore_errors=True)


async def test_a_queue_runs_over_tls_with_a_client_certificate(tls: Tls) -> None:
    aq = AffinityQueue(tls.settings())

    @aq.handler("echo")
    async def echo(payload: int) -> int:
        return payload + 1

    async with aq:
        job = await aq.queue().add({"type": "echo", "identifyTag": "t", "payload": 41})
        assert await aq.queue().wait_for(job.id, timeout_s=10) == 42


async def test_a_wrong_ca_fails_at_start_naming_tls_and_the_ca(tls: Tls) -> None:
    aq = AffinityQueue(tls.settings(redis_ssl_ca_certs=str(tls.other_ca)))
    with pytest.raises(QueueUnavailableError) as e:
        await aq.start()
    await aq.aclose()
    assert e.value.tls_failed and not e.value.maybe_written
    assert "TLS" in str(e.value) and "REDIS_SSL_CA_CERTS" in str(e.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


async def test_the_host_name_is_checked_unless_turned_off(tls: Tls) -> None:
    """The server's certificate names 127.0.0.1 only: ``localhost`` does not match it."""
    aq = AffinityQueue(tls.settings(host="localhost"))
    with pytest.raises(QueueUnavailableError, match="TLS") as e:
        await aq.start()
    await aq.aclose()
    assert e.value.tls_failed
    unchecked = AffinityQueue(tls.settings(host="localhost", redis_ssl_check_hostname=False))
    async with unchecked:
        assert (await unchecked.queue().get_queue_stats()).pending == 0


def test_tls_settings_are_checked_at_construction(tls: Tls) -> None:
    with pytest.raises(ValidationError, match="REDIS_SSL_CA_CERTS set, but REDIS_URL"):
        QueueSettings(_env_file=None, redis_url="redis://h", redis_ssl_ca_certs=str(tls.ca))
    with pytest.raises(ValidationError, match="REDIS_SSL_CA_CERTS: no file at"):
        QueueSettings(_env_file=None, redis_url="rediss://h", redis_ssl_ca_certs="/nope.crt")
    with pytest.raises(ValidationError, match="REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go"):
        QueueSettings(
            _env_file=None, redis_url="rediss://h", redis_ssl_certfile=str(tls.client_cert)
        )
