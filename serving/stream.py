"""The stream lane: router -> model replica calls as frames on kept-open TCP connections.

Why: a Ray Serve handle call costs about 1.2 ms of CPU per hop on 2 cores (gRPC, Serve's request
wrapping and metrics, pickling, in both processes); a frame on an open socket costs about 0.1 ms
(bench/results/serving.json measures both, through Serve's proxy and at the replica port).
Serve still owns everything else, and the lane follows it:

- membership: a router learns the lanes by `DeploymentHandle.broadcast("stream_endpoint")` to
  the replicas Serve runs, every `rediscover_s`; a replica missing from a complete answer is
  forgotten, and a replica that says it is draining is forgotten at once;
- back-pressure: a replica answers a call frame with a refusal ("busy") instead of taking it
  when it already holds `max_ongoing_requests` calls, lane and handle together; the router then
  makes the call through the handle, where Serve queues it or picks another replica;
- draining: when Serve stops a replica (scale-down, redeploy), its `__del__` drains the lane:
  new call frames are refused ("draining": the router goes through Serve, to another replica),
  calls in flight finish, then the connections close. A refused call was never computed, so it
  is computed once; only a replica that dies mid-call (a crash) costs a retry through Serve;
- fallback: a call whose lane fails at the connection level goes through the handle instead,
  so a dying replica costs no answers;
- metrics: each replica counts its calls by transport and its refusals by reason, per replica.

Wire format, both ways: a frame is a 4-byte big-endian length and that many bytes.
    client -> replica   first frame: the lane's token (random per replica, only ever handed out
                        through Serve); then one frame per call: a JSON array of texts
    replica -> client   one frame per call: a 4-byte header length, a JSON `AnswerHeader`, then
                        the probabilities as little-endian float32 [rows x labels]; or a header
                        alone, carrying the model's error or the replica's refusal
Nothing is unpickled, and a connection whose first frame is not the token is closed unread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from ray.serve.handle import DeploymentHandle

from rollout.evidence import Variant
from serving.answer import ModelAnswer
from serving.errors import ModelCallError

log = logging.getLogger("ray.serve")

MAX_FRAME_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT_S = 0.25
RETRY_BROKEN_AFTER_S = 60.0  # a lane that broke is not used again for this long (its replica may be gone)
DRAIN_TIMEOUT_S = 15.0  # within Serve's graceful_shutdown_timeout_s (20 s by default)
Refusal = Literal["busy", "draining"]
_LENGTH = struct.Struct("!I")
_TEXTS: TypeAdapter[list[str]] = TypeAdapter(list[str])

Predict = Callable[[list[str]], Awaitable[ModelAnswer]]


class Endpoint(BaseModel):
    """Where one model replica's lane listens, and the token it expects first."""

    model_config = ConfigDict(frozen=True)

    replica: str
    host: str
    port: int
    token: str


class AnswerHeader(BaseModel):
    """The JSON part of an answer frame: an answer's metadata and shape, or the model's error."""

    model_id: str = ""
    variant: Variant = Variant.STUDENT
    label_names: tuple[str, ...] = ()
    rows: int = 0
    compute_s: float = 0.0
    cost_dollars: float = 0.0
    error: str | None = None
    refused: Refusal | None = None  # the call was not taken (nothing was computed)


class LaneBroken(Exception):
    """The connection, not the model, failed: the call can go through the handle instead."""


class LaneRefused(Exception):
    """The replica did not take the call (busy, or draining): it can go through the handle."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason)
        self.reason: Refusal = reason


async def _read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise LaneBroken(f"frame of {length} bytes is over the limit of {limit}")
    return await reader.readexactly(length)


def _frame(*parts: bytes) -> bytes:
    return _LENGTH.pack(sum(len(p) for p in parts)) + b"".join(parts)


def encode_answer(answer: ModelAnswer) -> bytes:
    header = AnswerHeader(
        model_id=answer.model_id,
        variant=answer.variant,
        label_names=answer.label_names,
        rows=answer.probabilities.shape[0],
        compute_s=answer.compute_s,
        cost_dollars=answer.cost_dollars,
    ).model_dump_json()
    head = header.encode()
    return _frame(_LENGTH.pack(len(head)), head, np.ascontiguousarray(answer.probabilities, dtype="<f4").tobytes())


def encode_error(message: str) -> bytes:
    head = AnswerHeader(error=message).model_dump_json().encode()
    return _frame(_LENGTH.pack(len(head)), head)


def encode_refusal(reason: Refusal) -> bytes:
    head = AnswerHeader(refused=reason).model_dump_json().encode()
    return _frame(_LENGTH.pack(len(head)), head)


def decode_answer(frame: bytes) -> ModelAnswer:
    """The answer in a frame; ModelCallError when the model raised; LaneRefused when the replica
    did not take the call; LaneBroken when malformed."""
    try:
        (length,) = _LENGTH.unpack_from(frame)
        header = AnswerHeader.model_validate_json(frame[_LENGTH.size : _LENGTH.size + length])
        if header.refused is not None:
            raise LaneRefused(header.refused)
        if header.error is not None:
            raise ModelCallError(header.error)
        values = np.frombuffer(frame, dtype="<f4", offset=_LENGTH.size + length)
        probabilities = values.reshape(header.rows, len(header.label_names))
    except (struct.error, ValidationError, ValueError) as exc:
        raise LaneBroken(f"malformed answer frame: {exc}") from exc
    return ModelAnswer(
        header.model_id, header.variant, header.label_names, probabilities, header.compute_s, header.cost_dollars
    )


class StreamServer:
    """A model replica's side: starts on the first `endpoint()` call, on the replica's own event
    loop, and answers each call frame with `predict` (so lane calls batch with handle calls),
    unless `busy()` says the replica is full or it is draining (see the module docstring)."""

    def __init__(
        self,
        predict: Predict,
        replica: str,
        host: str,
        busy: Callable[[], bool] = lambda: False,
        on_refused: Callable[[Refusal], None] = lambda _: None,
    ) -> None:
        self._predict, self._busy, self._on_refused = predict, busy, on_refused
        self._replica, self._host = replica, host
        self._token = secrets.token_hex(16)
        self._server: asyncio.Future[asyncio.Server] | None = None  # one, however many ask at once
        self._writers: set[asyncio.StreamWriter] = set()
        self._draining = False
        self.in_flight = 0  # lane calls being answered: a custom autoscaling metric

    async def endpoint(self) -> Endpoint:
        if self._server is None:
            self._server = asyncio.ensure_future(asyncio.start_server(self._serve, self._host, 0))
        port = (await self._server).sockets[0].getsockname()[1]
        return Endpoint(replica=self._replica, host=self._host, port=port, token=self._token)

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Refuse new calls, stop listening, let the calls in flight finish (up to `timeout_s`), close."""
        self._draining = True
        if self._server is not None and self._server.done():
            self._server.result().close()
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.close()

    def close(self) -> None:
        """Stop listening and drop every connection (callers then go through Serve)."""
        if self._server is not None and self._server.done():
            self._server.result().close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            token = self._token.encode()
            if not hmac.compare_digest(await _read_frame(reader, limit=len(token)), token):
                return
            while True:
                texts = _TEXTS.validate_json(await _read_frame(reader))
                refusal: Refusal | None = "draining" if self._draining else "busy" if self._busy() else None
                if refusal is not None:
                    self._on_refused(refusal)
                    writer.write(encode_refusal(refusal))
                    continue
                self.in_flight += 1
                try:
                    writer.write(encode_answer(await self._predict(texts)))
                except Exception as exc:  # the model's own failure: reported, the connection stays
                    writer.write(encode_error(str(exc) or type(exc).__name__))
                finally:
                    self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError, LaneBroken, ValidationError):
            pass  # the router closed, or sent something this lane does not speak: drop the connection
        finally:
            self._writers.discard(writer)
            writer.close()


class _Connection:
    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.endpoint, self._reader, self._writer = endpoint, reader, writer

    @classmethod
    async def open(cls, endpoint: Endpoint) -> _Connection:
        try:  # a firewall that drops packets would otherwise hold the caller until its own timeout
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except TimeoutError as exc:
            raise LaneBroken(f"no connection to {endpoint.host}:{endpoint.port} in {CONNECT_TIMEOUT_S} s") from exc
        writer.write(_frame(endpoint.token.encode()))
        return cls(endpoint, reader, writer)

    async def ask(self, texts: list[str]) -> ModelAnswer:
        self._writer.write(_frame(_TEXTS.dump_json(texts)))
        return decode_answer(await _read_frame(self._reader))

    def close(self) -> None:
        self._writer.close()


class StreamClient:
    """A router's side for one model deployment: calls its replicas over their lanes, the least
    busy first, and through the Serve handle while none is known or when a lane breaks."""

    def __init__(self, handle: DeploymentHandle[Any], rediscover_s: float = 1.0, max_idle: int = 32) -> None:
        self._handle = handle.options(method_name="predict")
        self._replicas = handle
        self._rediscover_s, self._max_idle = rediscover_s, max_idle
        self._endpoints: dict[str, Endpoint] = {}
        self._busy: dict[str, int] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._broken: dict[Endpoint, float] = {}  # -> when it broke
        self._discovery: asyncio.Task[None] | None = None

    async def __call__(self, texts: list[str]) -> ModelAnswer:
        if self._discovery is None:
            self._discovery = asyncio.get_running_loop().create_task(self._discover_forever())
        if not self._endpoints:
            return await self.via_handle(texts)
        endpoint = self._endpoints[min(self._busy, key=lambda r: (self._busy[r], random.random()))]
        self._busy[endpoint.replica] += 1
        try:
            return await self._ask(endpoint, texts)
        except LaneRefused as refused:  # not computed: Serve queues it, or picks another replica
            if refused.reason == "draining":
                self._forget(endpoint.replica)
            return await self.via_handle(texts)
        except (OSError, asyncio.IncompleteReadError, LaneBroken) as exc:
            log.info("lane to replica %s broke (%s); calling through Serve", endpoint.replica, exc)
            self._broken[endpoint] = time.monotonic()
            if self._endpoints.get(endpoint.replica) == endpoint:
                self._forget(endpoint.replica)
            return await self.via_handle(texts)
        finally:
            if self._endpoints.get(endpoint.replica) == endpoint:
                self._busy[endpoint.replica] -= 1

    async def via_handle(self, texts: list[str]) -> ModelAnswer:
        response = self._handle.remote(texts)
        try:
            answer: ModelAnswer = await response
        except asyncio.CancelledError:  # the caller gave up: stop the replica working on it
            response.cancel()
            raise
        return answer

    async def _ask(self, endpoint: Endpoint, texts: list[str]) -> ModelAnswer:
        idle = self._idle[endpoint.replica]
        connection = idle.pop() if idle else await _Connection.open(endpoint)
        try:
            answer = await connection.ask(texts)
        except (ModelCallError, LaneRefused):  # a whole frame was read: the connection is still good
            self._release(connection)
            raise
        except BaseException:  # broken, or cancelled mid-frame: the connection's state is unknown
            connection.close()
            raise
        self._release(connection)
        return answer

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.endpoint.replica)
        if idle is not None and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.close()

    def _forget(self, replica: str) -> None:
        self._endpoints.pop(replica, None)
        self._busy.pop(replica, None)
        for connection in self._idle.pop(replica, []):
            connection.close()

    def _learn(self, endpoint: Endpoint) -> None:
        broke = self._broken.get(endpoint)
        if broke is not None and time.monotonic() - broke < RETRY_BROKEN_AFTER_S:
            return
        self._broken.pop(endpoint, None)
        known = self._endpoints.get(endpoint.replica)
        if known != endpoint:
            if known is not None:
                self._forget(endpoint.replica)
            self._endpoints[endpoint.replica] = endpoint
            self._busy[endpoint.replica] = 0
            self._idle[endpoint.replica] = []

    async def _discover_forever(self) -> None:
        """Every `rediscover_s`, ask each replica Serve runs for its lane: new ones are learned, and
        when every replica answered, the ones no longer among them are forgotten."""
        while True:
            try:
                response = self._replicas.broadcast("stream_endpoint")
                async with asyncio.timeout(5.0):  # not wait_for: on 3.11 it can swallow a cancel
                    answers = await response.results_async(return_exceptions=True)
            except Exception as exc:  # Serve unreachable for now: keep the lanes known, ask again later
                log.debug("lane discovery failed (%s)", type(exc).__name__)
                answers = []
            now = time.monotonic()
            self._broken = {e: at for e, at in self._broken.items() if now - at < RETRY_BROKEN_AFTER_S}
            self._follow(answers)
            await asyncio.sleep(self._rediscover_s)

    def _follow(self, answers: list[Any]) -> None:
        """Learn the endpoints among `answers`; if every replica answered one, forget the rest."""
        endpoints = [answer for answer in answers if isinstance(answer, Endpoint)]
        for endpoint in endpoints:
            self._learn(endpoint)
        if endpoints and len(endpoints) == len(answers):
            running = {endpoint.replica for endpoint in endpoints}
            for replica in [r for r in self._endpoints if r not in running]:
                self._forget(replica)
