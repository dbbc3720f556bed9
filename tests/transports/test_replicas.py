"""Scale-out: two replicas behind nginx sharing one Redis; and what a Redis outage does."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from loopway.bench.server import wait_healthy
from tests.conftest import MODEL, READ_FILE, RedisServer, Server, free_port

NGINX_CONF = """
worker_processes 1;
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream loopway {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location / {{
            proxy_pass http://loopway;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run installs it")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return binary


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server, Server]]:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(tmp / "redis")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    a = Server(tmp / "a", "--store", redis.url)
    b = Server(tmp / "b", "--store", redis.url)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, a=a.port, b=b.port, port=port))
    nginx = subprocess.Popen(
        [nginx_binary(), "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/v1"
    wait_healthy(url.removesuffix("/v1"))
    yield url, a, b
    nginx.terminate()
    nginx.wait(timeout=10)
    a.stop()
    b.stop()
    redis.stop()


def test_chained_http_continuations_work_on_any_replica(cluster: tuple[str, Server, Server]):
    url, a, b = cluster
    client = OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    response = client.responses.create(model=MODEL, input="read src/a.py then src/b.py then src/c.py", tools=[READ_FILE])
    for _ in range(4):  # nginx alternates replicas: every hop rebuilds the chain from Redis
        calls = [o for o in response.output if o.type == "function_call"]
        if not calls:
            break
        response = client.responses.create(
            model=MODEL,
            tools=[READ_FILE],
            previous_response_id=response.id,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "ok"}],
        )
    assert response.output[0].type == "message" and "src/c.py" in response.output_text
    for replica in (a, b):  # both replicas see every stored response
        assert httpx.get(f"{replica.url}/responses/{response.id}").status_code == 200


def test_websocket_sessions_stay_on_their_replica(cluster: tuple[str, Server, Server]):
    url, _, _ = cluster
    client = OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    with client.responses.connect() as conn:
        previous = None
        for turn in range(6):  # store=false: only the replica holding the connection cache can continue
            conn.response.create(
                model=MODEL, input=f"turn {turn}", store=False, **({"previous_response_id": previous} if previous else {})
            )
            event = next(e for e in conn if e.type in ("response.completed", "error"))
            assert event.type == "response.completed", event
            previous = event.response.id


def test_redis_outage_keeps_store_false_sessions_and_refuses_store_true_then_recovers(tmp_path: Path):
    redis = RedisServer(tmp_path / "redis")
    server = Server(tmp_path, "--store", redis.url)
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    try:
        with client.responses.connect() as conn:
            conn.response.create(model=MODEL, input="hello", store=False)
            previous = next(e for e in conn if e.type == "response.completed").response.id
            redis.stop()  # the outage
            conn.response.create(model=MODEL, input="still here?", store=False, previous_response_id=previous)
            assert next(e for e in conn if e.type in ("response.completed", "error")).type == "response.completed"
            conn.response.create(model=MODEL, input="store this", store=True)
            error = next(e for e in conn if e.type in ("response.completed", "error"))
            assert error.type == "error" and error.status == 503 and error.error.code == "store_unavailable"
        r = httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "store this"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        assert r.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/responses/resp_x").status_code == 503
        redis = RedisServer(tmp_path / "redis", port=redis.port)  # back, on the same port
        for _ in range(50):
            r = httpx.post(f"{server.url}/responses", json={"model": MODEL, "input": "store this"})
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/responses/{r.json()['id']}").status_code == 200
    finally:
        server.stop()
        redis.stop()


def test_kill_9_of_loopway_and_redis_loses_no_acknowledged_response(tmp_path: Path):
    redis = RedisServer(tmp_path / "redis")
    server = Server(tmp_path, "--store", redis.url, "--sim-decode-tps", "100000")
    with httpx.Client(timeout=30) as http:
        acknowledged = [
            http.post(f"{server.url}/responses", json={"model": MODEL, "input": f"n{i}"}).json()["id"] for i in range(10)
        ]
    server.process.kill()
    redis.process.kill()  # both at once, no shutdown: only Redis's append-only file remains
    server.process.wait()
    redis.process.wait()
    server.log.close()
    redis = RedisServer(tmp_path / "redis", port=redis.port)
    again = Server(tmp_path, "--store", redis.url)
    try:
        for response_id in acknowledged:
            assert httpx.get(f"{again.url}/responses/{response_id}").status_code == 200
    finally:
        again.stop()
        redis.stop()
