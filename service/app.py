"""The FastAPI app factory: routes, limits, auth, metrics and the engine lifetime.

``create_app(settings)`` loads the checkpoint in the background after the
server starts listening: ``/healthz`` answers at once, ``/readyz`` turns 200
when the model is loaded and the engine is alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from model.checkpoint import read_demo_card
from model.errors import VideoRewardError
from model.scorer import VideoRewardScorer, to_scores
from model.video import SamplingConfig

from .batcher import Batcher
from .engine import Engine, LocalEngine
from .errors import ServiceError, status_for
from .metrics import Metrics
from .pipeline import ItemOutcome, ItemPipeline, VideoInput
from .schemas import (
    CompareRequest,
    CompareResponse,
    DimComparison,
    ErrorInfo,
    ErrorResponse,
    Health,
    ItemResult,
    ModelInfo,
    PairResult,
    ScoreRequest,
    ScoreResponse,
    Timings,
)
from .settings import Settings

logger = logging.getLogger(__name__)

SCORING_ROUTES = ("/score", "/compare")


def checkpoint_id(path: Path) -> str:
    """Directory name + a short hash of its configs and weight files' sizes and mtimes."""
    h = hashlib.sha256()
    for name in ("config.json", "reward_config.json"):
        f = path / name
        if f.is_file():
            h.update(f.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{path.resolve().name}@{h.hexdigest()[:12]}"


def error_response(err: VideoRewardError, *, status: int | None = None) -> JSONResponse:
    headers = {}
    retry = getattr(err, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return JSONResponse(
        ErrorResponse(error=ErrorInfo(code=err.code, message=err.message)).model_dump(),
        status_code=status or status_for(err.code),
        headers=headers,
    )


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over the limit: by Content-Length up front, else while streaming."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ServiceError("payload_too_large", f"request body exceeds {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await error_response(too_big)(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await error_response(too_big)(scope, receive, send)


class ServiceState:
    """Everything the routes need; lives on ``app.state.svc``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.scorer: VideoRewardScorer | None = None
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.pipeline: ItemPipeline | None = None
        self.checkpoint_id = checkpoint_id(settings.checkpoint)
        self.demo_card = read_demo_card(settings.checkpoint)
        self.load_error: str | None = None
        self.draining = False
        self.active_requests = 0
        self.fatal_reason: str | None = None
        self.on_fatal: Callable[[str], None] | None = None

    def fatal(self, reason: str) -> None:
        """The engine cannot recover (e.g. a tensor-parallel rank died): not ready, and ask the server to exit."""
        if self.fatal_reason is None:
            self.fatal_reason = reason
            self.metrics.ready.set(0)
            logger.error("fatal: %s; the process will exit non-zero so a supervisor restarts it", reason)
            if self.on_fatal is not None:
                self.on_fatal(reason)

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and self.pipeline is not None
            and self.engine is not None
            and self.engine.alive
            and self.batcher is not None
            and self.batcher.alive
        )

    def not_ready_reason(self) -> str:
        if self.fatal_reason:
            return f"engine failed: {self.fatal_reason}"
        if self.draining:
            return "draining: the server is shutting down"
        if self.load_error:
            return f"model failed to load: {self.load_error}"
        if self.pipeline is None:
            return "the model is loading"
        if self.engine is None or not self.engine.alive:
            return "the model engine is not alive"
        return "the batcher is not running"

    async def start(
        self,
        engine_factory: Callable[[VideoRewardScorer], Engine] | None,
        scorer_factory: Callable[[], VideoRewardScorer] | None,
    ) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        load = scorer_factory or (lambda: VideoRewardScorer.from_pretrained(s.checkpoint, device=s.device, dtype=s.dtype))
        try:
            self.scorer = await loop.run_in_executor(None, load)
        except Exception as e:
            self.load_error = str(e)
            logger.error("could not load checkpoint %s: %s", s.checkpoint, e)
            if scorer_factory is not None:  # a custom (e.g. multi-rank) load cannot be retried in place
                self.fatal(f"model load failed: {e}")
            return
        self.engine = (engine_factory or LocalEngine)(self.scorer)
        if hasattr(self.engine, "start_heartbeat"):
            self.engine.start_heartbeat()
        self.batcher = Batcher(
            self.engine,
            max_batch_size=s.max_batch_size,
            max_batch_tokens=s.max_batch_tokens,
            max_wait_ms=s.max_wait_ms,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.pipeline = ItemPipeline(s, self.scorer.builder, self.batcher, self.metrics, self.checkpoint_id)
        info = self.scorer.info()
        logger.info(
            "ready: checkpoint %s (%s, %.1fM parameters) on %s/%s; dims %s; normalisation %s",
            self.checkpoint_id, s.checkpoint, info["parameters"] / 1e6, info["device"], info["dtype"],
            info["eval_dims"], "on" if self.scorer.default_normalize() else "off",
        )
        if self.demo_card is not None:
            logger.warning(
                "DEMO MODEL: %s is the synthetic demo (%s), NOT VideoReward. %s",
                s.checkpoint, self.demo_card.get("name", "demo"), self.demo_card.get("note", ""),
            )
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.engine is not None:
            await self.engine.close()
        if self.pipeline is not None:
            self.pipeline.close()

    def require_ready(self) -> ItemPipeline:
        if self.draining:
            raise ServiceError("shutting_down", "the server is shutting down; retry on another replica", retry_after=self.settings.retry_after_s)
        if not self.ready or self.pipeline is None:
            raise ServiceError("engine_unavailable", self.not_ready_reason(), retry_after=self.settings.retry_after_s)
        return self.pipeline


def _svc(request: Request) -> ServiceState:
    return request.app.state.svc


Svc = Annotated[ServiceState, Depends(_svc)]


def _auth(request: Request) -> None:
    key = request.app.state.svc.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise ServiceError("unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <api key>'")


Auth = Annotated[None, Depends(_auth)]


# -- request parsing -------------------------------------------------------------------------
class ParsedItem:
    """One requested score: a resolved video (or the error resolving it), a prompt and sampling."""

    def __init__(self) -> None:
        self.video: VideoInput | None = None
        self.prompt: str = ""
        self.sampling: SamplingConfig | None = None
        self.error: VideoRewardError | None = None

    def fail(self, err: VideoRewardError) -> None:
        if self.error is None:
            self.error = err


def _catch(item: ParsedItem, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except VideoRewardError as e:
        item.fail(e)
    return None


def _opt_number(form: Any, name: str, kind: type) -> Any:
    v = form.get(name)
    if v is None or v == "":
        return None
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ServiceError("invalid_request", f"form field {name} must be a {kind.__name__}, got {v!r}") from None


def _normalize_flag(query: bool | None, body: bool | None, scorer: VideoRewardScorer) -> bool:
    flag = body if body is not None else query
    if flag is None:
        return scorer.default_normalize()
    if flag and scorer.reward_config.normalization is None:
        raise ServiceError("invalid_input", "this checkpoint has no normalisation statistics; send normalize=false")
    return flag


async def _read_json(request: Request, model: type) -> Any:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise ServiceError("invalid_request", f"invalid JSON body at '{loc}': {first.get('msg')}") from None


async def _read_upload(upload: Any, pipeline: ItemPipeline, label: str) -> Callable[[], VideoInput]:
    """Read an uploaded file; returns the (thread-side) step that checks its size and hashes it."""
    if not isinstance(upload, UploadFile):
        raise ServiceError("invalid_request", f"{label} must be a file upload")
    data = await upload.read()
    return lambda: pipeline.resolver.from_bytes(data, repr(upload.filename or label))


def _content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise ServiceError("unsupported_media_type", f"send application/json or multipart/form-data, not {ctype or 'no content type'}")


def _request_body_doc(schema_ref: str, multipart: dict) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": multipart}},
            },
        }
    }


def _timings(t0: float, outcomes: list[ItemOutcome]) -> Timings:
    return Timings(
        total_ms=(time.perf_counter() - t0) * 1e3,
        decode_ms=sum(o.decode_ms for o in outcomes),
        queue_ms=max((o.queue_ms for o in outcomes), default=0.0),
        forward_ms=max((o.forward_ms for o in outcomes), default=0.0),
    )


async def _run_items(svc: ServiceState, pipeline: ItemPipeline, parsed: list[ParsedItem]) -> list[ItemOutcome]:
    """Score parsed items concurrently under admission control and the request deadline."""
    todo = [i for i, p in enumerate(parsed) if p.error is None]
    outcomes = [ItemOutcome(error=p.error) for p in parsed]
    # cache hits skip admission and the queue
    pending = []
    for i in todo:
        p = parsed[i]
        key = (svc.checkpoint_id, p.video.sha256, p.prompt, p.sampling)  # type: ignore[union-attr]
        hit = pipeline.cache.get(key)
        if hit is not None:
            svc.metrics.cache_hits.inc()
            outcomes[i] = ItemOutcome(raw=hit, cached=True)
        else:
            pending.append(i)
    if not pending:
        return outcomes
    pipeline.admit(len(pending))
    try:
        coros = [pipeline.score(parsed[i].video, parsed[i].prompt, parsed[i].sampling) for i in pending]  # type: ignore[arg-type]
        try:
            results = await asyncio.wait_for(asyncio.gather(*coros), timeout=svc.settings.request_timeout_s)
        except TimeoutError:
            raise ServiceError(
                "deadline_exceeded", f"the request did not finish within {svc.settings.request_timeout_s:g} s"
            ) from None
    finally:
        pipeline.release(len(pending))
    for i, r in zip(pending, results, strict=True):
        outcomes[i] = r
    return outcomes


def _overall_status(errors: list[VideoRewardError | None]) -> int:
    """200 when any item succeeded; else the first error's status."""
    if any(e is None for e in errors):
        return 200
    return status_for(next(e for e in errors if e is not None).code)


def _info(err: VideoRewardError | None) -> ErrorInfo | None:
    return None if err is None else ErrorInfo(code=err.code, message=err.message)


def create_app(
    settings: Settings,
    *,
    engine_factory: Callable[[VideoRewardScorer], Engine] | None = None,
    scorer_factory: Callable[[], VideoRewardScorer] | None = None,
) -> FastAPI:
    """The app. ``scorer_factory`` and ``engine_factory`` replace the single-device load and engine
    (the tensor-parallel launcher passes both)."""
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(state.start(engine_factory, scorer_factory))
        app.state.loader = loader
        try:
            yield
        finally:
            state.draining = True
            await asyncio.gather(loader, return_exceptions=True)
            await state.stop()

    app = FastAPI(
        title="VideoReward scoring service",
        version="0.1.0",
        description="Scores generated videos against their text prompts: VQ, MQ, TA and Overall.",
        lifespan=lifespan,
    )
    app.state.svc = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        route = request.url.path if request.url.path in (*SCORING_ROUTES, "/healthz", "/readyz", "/metrics", "/v1/model") else "other"
        t0 = time.perf_counter()
        state.active_requests += 1
        try:
            response = await call_next(request)
        finally:
            state.active_requests -= 1
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(VideoRewardError)
    async def _typed(request: Request, exc: VideoRewardError) -> JSONResponse:
        if exc.code in ("queue_full", "shutting_down", "engine_unavailable") and not isinstance(exc, ServiceError):
            exc = ServiceError(exc.code, exc.message, retry_after=settings.retry_after_s)
        if exc.code not in ("queue_full",):
            state.metrics.rejected.labels(exc.code).inc()
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(ServiceError("invalid_request", f"invalid request at '{loc}': {first.get('msg', 'invalid')}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(ServiceError("internal_error", f"unexpected {type(exc).__name__}; see the server log"))

    # -- health -------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    async def readyz(svc: Svc) -> Any:
        """Readiness: model loaded, engine alive, not draining."""
        if svc.ready:
            return Health(status="ready")
        return JSONResponse(Health(status="unavailable", detail=svc.not_ready_reason()).model_dump(), status_code=503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(svc: Svc) -> Response:
        """Prometheus metrics."""
        if svc.batcher is not None:
            svc.metrics.queue_depth.set(svc.batcher.depth())
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}}, tags=["model"])
    async def model_info(svc: Svc) -> ModelInfo:
        """The loaded checkpoint, its sampling and normalisation, device, and batching settings."""
        svc.require_ready()
        assert svc.scorer is not None and svc.engine is not None
        info = svc.scorer.info()
        s = svc.settings
        return ModelInfo(
            id=svc.checkpoint_id,
            checkpoint=info["checkpoint"],
            eval_dims=info["eval_dims"],
            reward_token=info["reward_token"],
            output_dim=info["output_dim"],
            sampling=info["sampling"],
            normalization=info["normalization"],
            normalize_default=svc.scorer.default_normalize(),
            device=info["device"],
            dtype=info["dtype"],
            tp=s.tp,
            parameters=info["parameters"],
            demo=svc.demo_card is not None,
            note=svc.demo_card.get("note") if svc.demo_card is not None else None,
            batching={
                "max_batch_size": s.max_batch_size, "max_batch_tokens": s.max_batch_tokens,
                "max_wait_ms": s.max_wait_ms, "decode_workers": s.decode_workers, "cache_size": s.cache_size,
            },
            limits={
                "max_queue_items": s.max_queue_items, "max_request_bytes": s.max_request_bytes,
                "max_video_bytes": s.max_video_bytes, "max_items_per_request": s.max_items_per_request,
                "max_prompt_chars": s.max_prompt_chars, "max_duration_s": s.max_duration_s,
                "max_frames": s.max_frames, "max_pixels_per_frame": s.max_pixels_per_frame,
                "max_streams": s.max_streams, "decode_timeout_s": s.decode_timeout_s,
                "request_timeout_s": s.request_timeout_s, "allowed_roots": [str(r) for r in s.allowed_roots],
            },
            engine=svc.engine.info(),
        )

    # -- scoring --------------------------------------------------------------------------------
    async def _parse(
        pipeline: ItemPipeline, prompt: Any, fps: Any, num_frames: Any, max_pixels: Any, video: Callable[[], VideoInput]
    ) -> ParsedItem:
        """Validate one item. Resolving the video (base64 decode, file read, SHA-256) runs on a thread."""
        item = ParsedItem()
        item.prompt = prompt if isinstance(prompt, str) else ""
        _catch(item, lambda: pipeline.check_prompt(item.prompt))
        item.sampling = _catch(item, lambda: pipeline.sampling(fps, num_frames, max_pixels))
        try:
            item.video = await asyncio.to_thread(video)
        except VideoRewardError as e:
            item.fail(e)
        return item

    def _check_count(n: int, what: str) -> None:
        if n > settings.max_items_per_request:
            raise ServiceError("too_many_items", f"{n} {what} in one request; the limit is {settings.max_items_per_request}")

    async def _parse_score(request: Request, pipeline: ItemPipeline) -> tuple[list[ParsedItem], bool | None]:
        kind = _content_kind(request)
        if kind == "json":
            body: ScoreRequest = await _read_json(request, ScoreRequest)
            _check_count(len(body.items), "items")
            parsed = await asyncio.gather(*(
                _parse(pipeline, it.prompt, it.fps, it.num_frames, it.max_pixels,
                       lambda it=it, i=i: pipeline.resolver.from_ref(it.video, f"items[{i}]"))
                for i, it in enumerate(body.items)
            ))
            return list(parsed), body.normalize
        form = await request.form(max_files=settings.max_items_per_request * 2 + 1, max_fields=settings.max_items_per_request * 4 + 16)
        videos = form.getlist("video")
        prompts = form.getlist("prompt")
        if not videos:
            raise ServiceError("invalid_request", "multipart requests need one or more 'video' file fields")
        _check_count(len(videos), "videos")
        if len(prompts) == 1:
            prompts = prompts * len(videos)
        if len(prompts) != len(videos):
            raise ServiceError("invalid_request", f"send one 'prompt' for all videos or one per video; got {len(prompts)} prompts for {len(videos)} videos")
        fps, nf, mp = _opt_number(form, "fps", float), _opt_number(form, "num_frames", int), _opt_number(form, "max_pixels", int)
        norm = form.get("normalize")
        normalize = None if norm in (None, "") else str(norm).lower() in ("1", "true", "yes")
        parsed = []
        for i, (v, p) in enumerate(zip(videos, prompts, strict=True)):
            resolve = await _read_upload(v, pipeline, f"video[{i}]")
            parsed.append(await _parse(pipeline, p, fps, nf, mp, resolve))
        return parsed, normalize

    multipart_score = {
        "video": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "prompt": {"type": "array", "items": {"type": "string"}, "description": "one for all videos, or one per video"},
        "fps": {"type": "number"}, "num_frames": {"type": "integer"}, "max_pixels": {"type": "integer"},
        "normalize": {"type": "boolean"},
    }

    @app.post(
        "/score",
        response_model=ScoreResponse,
        responses={code: {"model": ErrorResponse} for code in (401, 403, 413, 415, 422, 500, 503, 504)},
        openapi_extra=_request_body_doc("ScoreRequest", multipart_score),
        tags=["scoring"],
    )
    async def score(request: Request, svc: Svc, _: Auth, normalize: Annotated[bool | None, Query()] = None) -> Any:
        """Score (video, prompt) items: JSON `items` or multipart `video` files with `prompt`(s)."""
        t0 = time.perf_counter()
        pipeline = svc.require_ready()
        assert svc.scorer is not None
        parsed, body_norm = await _parse_score(request, pipeline)
        norm = _normalize_flag(normalize, body_norm, svc.scorer)
        outcomes = await _run_items(svc, pipeline, parsed)
        results = []
        for i, o in enumerate(outcomes):
            if o.error is not None or o.raw is None:
                results.append(ItemResult(index=i, error=_info(o.error)))
            else:
                scores = to_scores(o.raw[None], svc.scorer.reward_config, norm)[0]
                results.append(ItemResult(index=i, cached=o.cached, **scores))
        body = ScoreResponse(model=svc.checkpoint_id, normalized=norm, results=results, timings=_timings(t0, outcomes))
        return JSONResponse(body.model_dump(), status_code=_overall_status([o.error for o in outcomes]))

    multipart_compare = {
        "video_a": {"type": "string", "format": "binary"}, "video_b": {"type": "string", "format": "binary"},
        "prompt": {"type": "string"}, "fps": {"type": "number"}, "num_frames": {"type": "integer"},
        "max_pixels": {"type": "integer"}, "normalize": {"type": "boolean"}, "tie_threshold": {"type": "number"},
    }

    @app.post(
        "/compare",
        response_model=CompareResponse,
        responses={code: {"model": ErrorResponse} for code in (401, 403, 413, 415, 422, 500, 503, 504)},
        openapi_extra=_request_body_doc("CompareRequest", multipart_compare),
        tags=["scoring"],
    )
    async def compare(request: Request, svc: Svc, _: Auth, normalize: Annotated[bool | None, Query()] = None) -> Any:
        """Compare pairs (A, B, prompt): scores, margin A − B, winner and Bradley-Terry-with-ties probabilities."""
        t0 = time.perf_counter()
        pipeline = svc.require_ready()
        assert svc.scorer is not None
        kind = _content_kind(request)
        tie = settings.tie_threshold
        items: list[ParsedItem] = []
        pair_slots: list[tuple[int, int]] = []
        if kind == "json":
            body: CompareRequest = await _read_json(request, CompareRequest)
            _check_count(len(body.pairs), "pairs")
            body_norm = body.normalize
            if body.tie_threshold is not None:
                tie = body.tie_threshold
            for i, pr in enumerate(body.pairs):
                a, b = await asyncio.gather(
                    _parse(pipeline, pr.prompt, pr.fps, pr.num_frames, pr.max_pixels,
                           lambda pr=pr, i=i: pipeline.resolver.from_ref(pr.video_a, f"pairs[{i}].video_a")),
                    _parse(pipeline, pr.prompt, pr.fps, pr.num_frames, pr.max_pixels,
                           lambda pr=pr, i=i: pipeline.resolver.from_ref(pr.video_b, f"pairs[{i}].video_b")),
                )
                pair_slots.append((len(items), len(items) + 1))
                items += [a, b]
        else:
            form = await request.form(max_files=3, max_fields=16)
            prompt = form.get("prompt")
            fps, nf, mp = _opt_number(form, "fps", float), _opt_number(form, "num_frames", int), _opt_number(form, "max_pixels", int)
            t = _opt_number(form, "tie_threshold", float)
            if t is not None:
                if t < 0:
                    raise ServiceError("invalid_request", "tie_threshold must be >= 0")
                tie = t
            norm_field = form.get("normalize")
            body_norm = None if norm_field in (None, "") else str(norm_field).lower() in ("1", "true", "yes")
            for side in ("video_a", "video_b"):
                if form.get(side) is None:
                    raise ServiceError("invalid_request", f"multipart /compare needs file fields video_a and video_b (missing {side})")
            sides = []
            for side in ("video_a", "video_b"):
                resolve = await _read_upload(form.get(side), pipeline, side)
                sides.append(await _parse(pipeline, prompt, fps, nf, mp, resolve))
            pair_slots.append((0, 1))
            items = sides
        norm = _normalize_flag(normalize, body_norm, svc.scorer)
        # one score per unique (video, prompt, sampling): a video shared by pairs is decoded and scored once
        unique: dict[tuple, int] = {}
        uniq_items: list[ParsedItem] = []
        slot_to_unique: list[int] = []
        for it in items:
            if it.error is not None:
                slot_to_unique.append(len(uniq_items))
                uniq_items.append(it)
                continue
            key = (it.video.sha256, it.prompt, it.sampling)  # type: ignore[union-attr]
            if key not in unique:
                unique[key] = len(uniq_items)
                uniq_items.append(it)
            slot_to_unique.append(unique[key])
        outcomes = await _run_items(svc, pipeline, uniq_items)
        log_k = math.log(settings.btt_k)
        results = []
        errors: list[VideoRewardError | None] = []
        for i, (sa, sb) in enumerate(pair_slots):
            oa, ob = outcomes[slot_to_unique[sa]], outcomes[slot_to_unique[sb]]
            err = oa.error or ob.error
            errors.append(err)
            if err is not None or oa.raw is None or ob.raw is None:
                results.append(PairResult(index=i, error=_info(err)))
                continue
            rc = svc.scorer.reward_config
            score_a = to_scores(oa.raw[None], rc, norm)[0]
            score_b = to_scores(ob.raw[None], rc, norm)[0]
            dims = {}
            for dim in (*rc.eval_dims, "Overall"):
                d = score_a[dim] - score_b[dim]
                p_a = 1.0 / (1.0 + math.exp(-(d - log_k)))
                p_b = 1.0 / (1.0 + math.exp(-(-d - log_k)))
                winner = "tie" if abs(d) <= tie else ("A" if d > 0 else "B")
                dims[dim] = DimComparison(A=score_a[dim], B=score_b[dim], margin=d, winner=winner, p_A=p_a, p_B=p_b, p_tie=1.0 - p_a - p_b)
            results.append(PairResult(index=i, dims=dims))
        body_out = CompareResponse(
            model=svc.checkpoint_id, normalized=norm, tie_threshold=tie, k=settings.btt_k, results=results,
            timings=_timings(t0, outcomes),
        )
        return JSONResponse(body_out.model_dump(), status_code=_overall_status(errors))

    return app
