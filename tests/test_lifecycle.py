"""The service's life beyond one request: a dead engine, a drain on SIGTERM, the event loop
kept free, and the refusal to serve unauthenticated beyond loopback. Against a fake engine;
tests/e2e/test_live_lifecycle.py kills real vLLM and sends a real SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest
import uvicorn

from app.api.server import GatewayServer, check_exposure
from app.cli import main
from app.engine.base import EngineDead, GenerationRequest
from app.settings import ConfigurationError, Settings
from tests.fakes import ner_output, sample
from tests.test_api import assert_problem

NER = {"task": "ner-it-clinical", "documents": [{"id": "d", "text": "febbre"}]}


def test_a_dead_engine_answers_retryably_then_fails_liveness_readiness_and_the_gauge(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output())
    assert sample(client.get("/metrics").text, "medlora_engine_ready") == 1

    def die(request: GenerationRequest) -> str:
        engine.failure = "the vLLM engine process died"
        raise EngineDead("the engine process died during the request")

    engine.respond = die
    r = client.post("/v1/ner", json=NER)
    assert_problem(r, 503, "engine-unavailable")
    assert r.headers["retry-after"]
    # Never "starting" for ever: the process is failed, and says so to the orchestrator.
    live = client.get("/livez")
    assert live.status_code == 503 and live.json()["status"] == "failed"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert sample(client.get("/metrics").text, "medlora_engine_ready") == 0
    body = assert_problem(client.post("/v1/ner", json=NER), 503, "not-ready")
    assert "failed" in body["detail"]


def request_in_flight(client: Any, engine: Any) -> tuple[threading.Thread, list[Any]]:
    """A request sent from a thread, returned once the engine has it; its response lands in the list."""
    running: list[Any] = []
    thread = threading.Thread(target=lambda: running.append(client.post("/v1/ner", json=NER)))
    thread.start()
    while not engine.calls:
        threading.Event().wait(0.01)
    return thread, running


def test_draining_refuses_new_requests_while_running_ones_finish(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output(("febbre", "SYMPTOM")), delay_s=0.5)
    service = client.app.state.service  # type: ignore[attr-defined]
    thread, running = request_in_flight(client, engine)
    service.begin_drain()
    assert service.in_flight == 1
    body = assert_problem(client.post("/v1/ner", json=NER), 503, "not-ready")
    assert "shutting down" in body["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert client.get("/livez").status_code == 200  # draining is healthy: no restart
    thread.join()
    assert running[0].status_code == 200 and running[0].json()["documents"][0]["entities"][0]["text"] == "febbre"
    assert service.in_flight == 0 and len(engine.calls) == 1


def test_past_the_grace_period_what_still_runs_gets_a_retryable_503(client_for: Any) -> None:
    client, engine = client_for(lambda r: ner_output(), delay_s=30)
    service = client.app.state.service  # type: ignore[attr-defined]
    thread, running = request_in_flight(client, engine)
    service.begin_drain()
    client.portal.call(service.stop_in_flight)  # type: ignore[union-attr]
    thread.join(timeout=10)
    assert not thread.is_alive()
    body = assert_problem(running[0], 503, "not-ready")
    assert running[0].headers["retry-after"] and "retry" in body["detail"]
    assert engine.cancelled == [engine.calls[0].request_id]  # the engine work was aborted


def test_sigterm_drains_first_and_the_server_exits_once_nothing_runs(make_fake_service: Any) -> None:
    service, _ = make_fake_service(lambda r: ner_output())
    server = GatewayServer(uvicorn.Config(lambda *a: None), service, grace_s=30)
    service.in_flight = 1
    server.handle_exit(signal.SIGTERM, None)
    assert service.draining and not server.should_exit  # the port stays open, answering 503
    asyncio.run(server.on_tick(1))
    assert not server.should_exit  # a request still runs
    service.in_flight = 0
    asyncio.run(server.on_tick(2))
    assert server.should_exit
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit  # a second Ctrl-C stops at once


def test_a_failed_engine_makes_the_server_drain_and_exit(make_fake_service: Any) -> None:
    service, engine = make_fake_service(lambda r: ner_output())
    server = GatewayServer(uvicorn.Config(lambda *a: None), service, grace_s=30)
    engine.failure = "the vLLM engine process died"
    asyncio.run(server.on_tick(1))
    assert service.draining and server.should_exit


def test_cpu_work_of_a_request_runs_off_the_event_loop(client_for: Any) -> None:
    client, _ = client_for(lambda r: ner_output(("febbre", "SYMPTOM")))
    service = client.app.state.service  # type: ignore[attr-defined]
    loop_thread = client.portal.call(threading.current_thread)  # type: ignore[union-attr]
    seen: dict[str, threading.Thread] = {}
    renderer, kind = service.runner.renderer, service.tasks["ner-it-clinical"].kind
    render, merge = renderer.render, kind.merge

    def spy_render(*args: Any) -> Any:
        seen["prompt"] = threading.current_thread()
        return render(*args)

    def spy_merge(*args: Any) -> Any:
        seen["merge"] = threading.current_thread()
        return merge(*args)

    renderer.render = spy_render
    kind.merge = spy_merge
    try:
        long_note = "Paziente con febbre. " * 400  # several chunks
        r = client.post("/v1/ner", json={"task": "ner-it-clinical", "documents": [{"id": "d", "text": long_note}]})
    finally:
        del kind.merge
    assert r.status_code == 200, r.text
    assert set(seen) == {"prompt", "merge"}
    assert all(thread is not loop_thread for thread in seen.values())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "medlora.internal"])
def test_serving_beyond_loopback_without_keys_is_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ConfigurationError, match="without API keys"):
        check_exposure(Settings(host=host), auth_enabled=False)
    check_exposure(Settings(host=host), auth_enabled=True)
    check_exposure(Settings(host=host, allow_unauthenticated=True), auth_enabled=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_without_keys_is_fine(host: str) -> None:
    check_exposure(Settings(host=host), auth_enabled=False)


def test_serve_on_all_interfaces_without_keys_exits_2_with_the_reason(capsys: Any) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on '0.0.0.0' without API keys" in err and "MEDLORA_API_KEYS_FILE" in err
