"""The stream lane and the router's call coalescing, over real loopback sockets (no Ray).

The Serve handle is the one fake: it stands in for discovery (`stream_endpoint`) and for the
fallback path (`predict`), and counts what reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from rollout.evidence import Variant
from serving.answer import ModelAnswer, split_answer
from serving.autoscaling import STREAM_IN_FLIGHT, queue_length_with_stream
from serving.errors import ModelCallError
from serving.model import CoalescingClient
from serving.stream import Endpoint, LaneBroken, StreamClient, StreamServer, _Connection, decode_answer, encode_answer

LABELS = ("negative", "positive")


def answer_for(texts: list[str]) -> ModelAnswer:
    """A deterministic model: P(positive) = length of the text / 100."""
    positive = np.asarray([len(t) / 100 for t in texts], dtype=np.float32)
    return ModelAnswer("m1", Variant.STUDENT, LABELS, np.stack([1 - positive, positive], axis=1), 0.004, 1e-6)


async def model(texts: list[str]) -> ModelAnswer:
    if "boom" in texts:
        raise ModelCallError("student m1: injected fault")
    if "slow" in texts:
        await asyncio.sleep(10)
    return answer_for(texts)


class FakeResponse:
    def __init__(self, result: Awaitable[Any]) -> None:
        self._result = result
        self.cancelled = False

    def __await__(self) -> Any:
        return self._result.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeBroadcast:
    def __init__(self, answers: Awaitable[list[Any]]) -> None:
        self._answers = answers

    async def results_async(self, return_exceptions: bool = False) -> list[Any]:
        return await self._answers


class FakeHandle:
    """A Serve handle to some replicas: `broadcast("stream_endpoint")` gives every running one's
    lane, `predict` answers directly (as Serve would, from any replica)."""

    def __init__(self, servers: list[StreamServer], method: str = "", calls: dict[str, int] | None = None) -> None:
        self.servers, self._method = servers, method  # the replicas Serve runs; a test may change them
        self.calls = calls if calls is not None else {}

    def options(self, method_name: str = "", **_: Any) -> FakeHandle:
        return FakeHandle(self.servers, method_name or self._method, self.calls)

    def remote(self, *args: Any) -> FakeResponse:
        self.calls[self._method] = self.calls.get(self._method, 0) + 1
        return FakeResponse(model(*args))

    def broadcast(self, method: str) -> FakeBroadcast:
        self.calls[f"broadcast {method}"] = self.calls.get(f"broadcast {method}", 0) + 1

        async def answers() -> list[Any]:
            return [await server.endpoint() for server in list(self.servers)]

        return FakeBroadcast(answers())


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition` (run's timeout bounds the wait): never for a clock to have been fast."""
    while not condition():
        await asyncio.sleep(0.01)


async def lane(**server_options: Any) -> tuple[StreamServer, StreamClient, FakeHandle]:
    server = StreamServer(model, replica="r1", host="127.0.0.1", **server_options)
    handle = FakeHandle([server])
    client = StreamClient(handle, rediscover_s=60)  # type: ignore[arg-type]
    await client(["first call: through the handle, while the lane is discovered"])
    await until(lambda: "r1" in client._endpoints)
    return server, client, handle


# --- wire format --------------------------------------------------------------------------------


def test_an_answer_survives_the_wire_exactly() -> None:
    sent = answer_for(["short", "a much longer text"])
    got = decode_answer(encode_answer(sent)[4:])
    assert (got.model_id, got.variant, got.label_names) == (sent.model_id, sent.variant, sent.label_names)
    assert np.array_equal(got.probabilities, sent.probabilities)
    assert (got.compute_s, got.cost_dollars) == (sent.compute_s, sent.cost_dollars)


@pytest.mark.parametrize("frame", [b"", b"\x00\x00\x00\x05{oops", b"\x00\x00\x00\x02{}abc"])
def test_a_malformed_answer_frame_breaks_the_lane_not_the_model(frame: bytes) -> None:
    with pytest.raises(LaneBroken, match="malformed"):
        decode_answer(frame)


# --- lane ---------------------------------------------------------------------------------------


def test_calls_go_over_the_lane_once_it_is_discovered() -> None:
    async def test() -> None:
        server, client, handle = await lane()
        assert handle.calls == {"predict": 1, "broadcast stream_endpoint": 1}
        for texts in (["one"], ["two", "three inputs here"], ["four"]):
            got = await client(texts)
            assert np.array_equal(got.probabilities, answer_for(texts).probabilities)
        assert handle.calls["predict"] == 1  # nothing more through the handle
        server.close()

    run(test)


def test_a_model_error_comes_back_as_itself_and_the_connection_is_kept() -> None:
    async def test() -> None:
        server, client, handle = await lane()
        with pytest.raises(ModelCallError, match="injected fault"):
            await client(["boom"])
        assert (await client(["fine"])).probabilities.shape == (1, 2)
        assert handle.calls["predict"] == 1  # a model error is not a broken lane: no retry through Serve
        server.close()

    run(test)


def test_a_broken_lane_falls_back_to_the_handle_and_is_forgotten() -> None:
    async def test() -> None:
        server, client, handle = await lane()
        await client(["warm the pool"])
        server.close()
        await asyncio.sleep(0.05)
        got = await client(["after the replica went away"])
        assert got.model_id == "m1" and handle.calls["predict"] == 2
        await client(["and the next one does not try the dead lane first"])
        assert handle.calls["predict"] == 3

    run(test)


def test_a_lane_that_broke_is_not_rediscovered_at_once() -> None:
    async def test() -> None:
        server = StreamServer(model, replica="r1", host="127.0.0.1")
        handle = FakeHandle([server])
        client = StreamClient(handle, rediscover_s=0.01)  # type: ignore[arg-type]
        await client(["discovery starts"])
        await until(lambda: "r1" in client._endpoints)
        endpoint = await server.endpoint()
        server.close()  # the replica stops listening, but Serve still names its lane

        async def still_named() -> Endpoint:
            return endpoint

        server.endpoint = still_named  # type: ignore[method-assign]
        asks = handle.calls["broadcast stream_endpoint"]
        for round_ in range(1, 4):
            await client(["through Serve"])
            await until(lambda n=asks + round_: handle.calls["broadcast stream_endpoint"] >= n)  # a discovery round
            assert not client._endpoints  # named again, but not used again
        assert handle.calls["predict"] == 4  # every call after the break went through Serve
        assert handle.calls["broadcast stream_endpoint"] >= asks + 3

    run(test)


def test_a_replica_serve_no_longer_runs_is_forgotten_at_the_next_discovery() -> None:
    async def test() -> None:
        servers = [StreamServer(model, replica=f"r{i}", host="127.0.0.1") for i in (1, 2)]
        handle = FakeHandle(list(servers))
        client = StreamClient(handle, rediscover_s=0.01)  # type: ignore[arg-type]
        await client(["discovery starts"])
        await until(lambda: set(client._endpoints) == {"r1", "r2"})
        handle.servers.remove(servers[1])  # Serve stopped r2 (its lane still listens)
        await until(lambda: set(client._endpoints) == {"r1"})
        for server in servers:
            server.close()

    run(test)


@pytest.mark.parametrize("steps", range(4))
def test_discovery_stops_when_cancelled_however_its_answer_lands(steps: int) -> None:
    """A cancel that arrives as the replicas' answer lands ends the loop (3.11's `wait_for` kept it
    going: asyncio.run then waited forever for it at shutdown)."""

    async def test() -> None:
        asked, landing = asyncio.Event(), asyncio.get_running_loop().create_future()

        async def answers() -> list[Any]:
            asked.set()
            return await landing

        handle = FakeHandle([])
        handle.broadcast = lambda method: FakeBroadcast(answers())  # type: ignore[method-assign]
        discovery = asyncio.create_task(StreamClient(handle, rediscover_s=0.01)._discover_forever())  # type: ignore[arg-type]
        await asked.wait()
        landing.set_result([])
        for _ in range(steps):  # the cancel lands some loop steps after the answer
            await asyncio.sleep(0)
        discovery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.shield(discovery)  # wait for the loop itself, not for our cancel of it
        assert discovery.cancelled()

    run(test)


def test_a_full_replica_refuses_the_call_untaken_and_serve_gets_it() -> None:
    async def test() -> None:
        full = {"now": False}
        refused: list[str] = []
        server, client, handle = await lane(busy=lambda: full["now"], on_refused=refused.append)
        full["now"] = True
        assert (await client(["over the limit"])).model_id == "m1"
        assert refused == ["busy"] and handle.calls["predict"] == 2 and server.in_flight == 0
        full["now"] = False
        await client(["room again: the same lane and connection"])
        assert handle.calls["predict"] == 2 and "r1" in client._endpoints
        server.close()

    run(test)


def test_a_draining_replica_finishes_its_calls_refuses_new_ones_and_is_forgotten_at_once() -> None:
    async def test() -> None:
        release = asyncio.Event()

        async def held(texts: list[str]) -> ModelAnswer:
            if "held" in texts:
                await release.wait()
            return answer_for(texts)

        server = StreamServer(held, replica="r1", host="127.0.0.1")
        handle = FakeHandle([server])
        client = StreamClient(handle, rediscover_s=60)  # type: ignore[arg-type]
        await client(["discover"])
        await until(lambda: "r1" in client._endpoints)
        in_flight = asyncio.ensure_future(client(["held"]))
        await asyncio.sleep(0.05)
        draining = asyncio.ensure_future(server.drain(timeout_s=5))
        await asyncio.sleep(0.05)
        assert (await client(["new, while draining"])).model_id == "m1"  # through Serve, untaken here
        assert "r1" not in client._endpoints and handle.calls["predict"] == 2
        assert not draining.done()  # the held call is not done yet
        release.set()
        assert np.array_equal((await in_flight).probabilities, answer_for(["held"]).probabilities)
        await draining
        assert handle.calls["predict"] == 2  # the held call was answered once, by its lane

    run(test)


def test_replicas_asked_at_once_open_one_lane() -> None:
    async def test() -> None:
        server = StreamServer(model, replica="r1", host="127.0.0.1")
        endpoints = await asyncio.gather(*(server.endpoint() for _ in range(4)))
        assert len(set(endpoints)) == 1
        server.close()

    run(test)


def test_a_wrong_token_gets_the_connection_closed_unanswered() -> None:
    async def test() -> None:
        server = StreamServer(model, replica="r1", host="127.0.0.1")
        endpoint = await server.endpoint()
        impostor = Endpoint(replica="r1", host=endpoint.host, port=endpoint.port, token="0" * 32)
        connection = await _Connection.open(impostor)
        with pytest.raises(asyncio.IncompleteReadError):
            await connection.ask(["let me in"])
        assert server.in_flight == 0
        server.close()

    run(test)


def test_a_caller_that_gives_up_closes_its_connection_and_the_replica_is_still_used() -> None:
    async def test() -> None:
        server, client, handle = await lane()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await client(["slow"])
        assert server.in_flight == 1  # still being answered: autoscaling sees it
        assert (await client(["fine"])).model_id == "m1"
        assert handle.calls["predict"] == 1
        server.close()

    run(test)


# --- coalescing ---------------------------------------------------------------------------------


def test_requests_ready_together_share_one_call_and_get_their_own_rows() -> None:
    calls: list[list[str]] = []

    async def call(texts: list[str]) -> ModelAnswer:
        calls.append(texts)
        return answer_for(texts)

    async def test() -> None:
        client = CoalescingClient(call, max_inputs=3)
        batches = [["a"], ["bb", "ccc"], ["dddd"]]
        answers = await asyncio.gather(*(client.submit(texts) for texts in batches))
        assert calls == [["a", "bb", "ccc"], ["dddd"]]  # the third would exceed max_inputs
        for texts, got in zip(batches, answers, strict=True):
            assert np.array_equal(got.probabilities, answer_for(texts).probabilities)
        assert sum(a.compute_s for a in answers[:2]) == pytest.approx(0.004)

    run(test)


def test_a_failed_shared_call_fails_each_caller_and_all_giving_up_cancels_it() -> None:
    started: list[asyncio.Event] = []
    cancelled: list[bool] = []

    async def call(texts: list[str]) -> ModelAnswer:
        if "boom" in texts:
            raise ModelCallError("down")
        started.append(asyncio.Event())
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return answer_for(texts)

    async def test() -> None:
        client = CoalescingClient(call, max_inputs=8)
        results = await asyncio.gather(client.submit(["boom"]), client.submit(["x"]), return_exceptions=True)
        assert all(isinstance(r, ModelCallError) for r in results)
        futures = [client.submit(["slow"]), client.submit(["slower"])]
        await asyncio.sleep(0.01)
        futures[0].cancel()
        await asyncio.sleep(0.01)
        assert not cancelled  # one caller is still waiting
        futures[1].cancel()
        await asyncio.sleep(0.01)
        assert cancelled == [True]

    run(test)


def test_split_answer_shares_compute_and_cost_by_inputs() -> None:
    whole = answer_for(["a", "b", "c", "d"])
    parts = split_answer(whole, [1, 3])
    assert [p.probabilities.shape[0] for p in parts] == [1, 3]
    assert [p.compute_s for p in parts] == pytest.approx([0.001, 0.003])
    assert sum(p.cost_dollars for p in parts) == pytest.approx(whole.cost_dollars)


# --- autoscaling --------------------------------------------------------------------------------


class Config:
    def get_target_ongoing_requests(self) -> float:
        return 4.0


class Context:
    def __init__(self, replicas: int, handle_requests: float, lane: dict[str, float]) -> None:
        self.current_num_replicas = self.target_num_replicas = replicas
        self.total_num_requests = handle_requests
        self.aggregated_metrics = {STREAM_IN_FLIGHT: lane}
        self.config = Config()


def test_autoscaling_counts_lane_calls_with_serves_own() -> None:
    desired, _ = queue_length_with_stream(Context(2, 4.0, {"r1": 6.0, "r2": 10.0}))  # type: ignore[arg-type]
    assert desired == pytest.approx((4 + 16) / 4)
    desired, _ = queue_length_with_stream(Context(2, 4.0, {}))  # type: ignore[arg-type]
    assert desired == pytest.approx(1.0)  # no lane metric yet: Serve's own formula
