"""rollout.webhooks: the real sender against a real HTTP server on 127.0.0.1, plus its limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rollout.errors import WebhookError
from rollout.events import Event, EventKind
from rollout.webhooks import HttpWebhookSender, RecordingWebhookSender, WebhookStats

BACKOFF_S = 0.01  # keep retries fast


def event(event_id: int = 1) -> Event:
    return Event(
        id=event_id,
        at=1_000_000.0,
        kind=EventKind.DECISION,
        action="rollback",
        reason="agreement upper bound 0.912 < threshold 0.970 after n=412",
        payload={"to": {"weight": 0.0}},
    )


@dataclass
class Script:
    """What the server answers, request by request: a status code, or (delay_s, code)."""

    answers: list[int | tuple[float, int]]
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def next(self) -> tuple[float, int]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer if isinstance(answer, tuple) else (0.0, answer)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script(answers=[200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            script.received.append((self.path, dict(self.headers), body))
            delay, code = script.next()
            time.sleep(delay)
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_posts_the_event_as_json(server: tuple[str, Script]) -> None:
    url, script = server
    sender = HttpWebhookSender([f"{url}/hooks/rollout"], backoff_s=BACKOFF_S)
    sender.send(event(7))
    assert sender.flush(5.0)
    sender.close()
    path, headers, body = script.received[0]
    assert path == "/hooks/rollout" and headers["content-type"] == "application/json"
    assert Event.model_validate_json(body) == event(7)
    assert json.loads(body)["reason"].endswith("after n=412")
    assert sender.stats() == WebhookStats(queued=1, delivered=1)


def test_retries_after_a_500(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [500, 200]
    sender = HttpWebhookSender([url], retries=2, backoff_s=BACKOFF_S)
    sender.send(event())
    assert sender.flush(5.0)
    sender.close()
    assert len(script.received) == 2 and script.received[0][2] == script.received[1][2]
    assert sender.stats() == WebhookStats(queued=1, delivered=1, retries=1)


def test_retries_after_a_timeout(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(0.6, 200), 200]  # the first answer comes after the 0.2 s timeout
    sender = HttpWebhookSender([url], timeout_s=0.2, retries=1, backoff_s=0.01)
    sender.send(event())
    assert sender.flush(5.0)
    sender.close()
    stats = sender.stats()
    assert (stats.delivered, stats.retries, stats.failed) == (1, 1, 0)
    assert len(script.received) == 2


def test_gives_up_after_the_retries_and_names_only_the_host(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [503]
    sender = HttpWebhookSender([f"{url}/services/T0/B0?token=s3cret"], retries=2, backoff_s=BACKOFF_S)
    sender.send(event())
    assert sender.flush(5.0)
    sender.close()
    stats = sender.stats()
    assert (stats.delivered, stats.failed, stats.retries) == (0, 1, 2)
    assert len(script.received) == 3
    assert stats.last_error == "127.0.0.1: HTTP 503 after 3 attempt(s)"  # no path, no query secret


def test_a_4xx_is_final_and_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [404]
    sender = HttpWebhookSender([url], retries=3, backoff_s=BACKOFF_S)
    sender.send(event())
    assert sender.flush(5.0)
    sender.close()
    assert len(script.received) == 1 and sender.stats().failed == 1


def test_every_url_gets_every_event(server: tuple[str, Script]) -> None:
    url, script = server
    sender = HttpWebhookSender([f"{url}/a", f"{url}/b"], backoff_s=BACKOFF_S)
    sender.send(event(1))
    sender.send(event(2))
    assert sender.flush(5.0)
    sender.close()
    sent = sorted((path, Event.model_validate_json(body).id) for path, _, body in script.received)
    assert sent == [("/a", 1), ("/a", 2), ("/b", 1), ("/b", 2)]
    assert sender.stats().delivered == 4


def test_a_full_queue_drops_and_counts_and_send_never_blocks() -> None:
    entered, release = threading.Event(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(5.0)
        return httpx.Response(200)

    sender = HttpWebhookSender(
        ["http://hooks.example/x"], max_queue=1, transport=httpx.MockTransport(handler), backoff_s=BACKOFF_S
    )
    sender.send(event(1))
    assert entered.wait(5.0)  # the worker holds event 1, stuck in a slow POST
    started = time.perf_counter()
    sender.send(event(2))  # fills the queue
    sender.send(event(3))  # dropped
    assert time.perf_counter() - started < 0.5  # generous: the box is shared
    release.set()
    assert sender.flush(5.0)
    sender.close()
    assert sender.stats() == WebhookStats(queued=2, delivered=2, dropped=1)


def test_after_close_events_are_dropped_not_raised() -> None:
    sender = HttpWebhookSender(["http://hooks.example/x"], transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    sender.close()
    sender.send(event())
    assert sender.stats().dropped == 1


def test_no_urls_means_no_thread_and_nothing_sent() -> None:
    sender = HttpWebhookSender([])
    sender.send(event())
    assert sender.stats() == WebhookStats() and sender.flush(0.1)
    sender.close()


@pytest.mark.parametrize(
    ("urls", "kwargs", "match"),
    [
        (["ftp://hooks.example/x"], {}, "must be http"),
        (["not a url"], {}, "must be http"),
        (["http://hooks.example"], {"timeout_s": 0}, "timeout_s=0"),
        (["http://hooks.example"], {"retries": -1}, "retries=-1"),
    ],
)
def test_bad_settings_are_a_webhook_error(urls: list[str], kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(WebhookError, match=match):
        HttpWebhookSender(urls, **kwargs)  # type: ignore[arg-type]


def test_the_recording_fake_keeps_events_in_order() -> None:
    fake = RecordingWebhookSender()
    fake.send(event(1))
    fake.send(event(2))
    assert [e.id for e in fake.sent] == [1, 2] and fake.stats().delivered == 2
