"""``GET /metrics``: Prometheus text format through ``prometheus-client``.

One :class:`ServerMetrics` per application with its own ``CollectorRegistry`` (no global
registry: several servers run in one test process).  Two kinds of numbers:

* counted as things happen, on the event loop: HTTP requests by route template, method and
  status (a middleware); prompts queued; prompts finished by status, their queue wait and run
  time, per-node-class execution time and output-cache hits and misses (from the façade's
  completion callback, which carries the executor's report); webhook deliveries;
* read when scraped (a custom collector): prompts pending and running, WebSocket clients,
  model loads, load time and resident model memory by device.  These read in-memory counters
  only (no SQLite), so a scrape costs microseconds.

``graph_runtime`` never imports prometheus: it reports through events, the completion
outcome and plain attributes, and this module turns them into metrics.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.async_runtime import AsyncRuntime
    from graph_runtime.service import JobOutcome
    from web.ws import Hub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
NODE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

FINISHED_LABELS = {"succeeded": "success", "failed": "error", "interrupted": "interrupted",
                   "cancelled": "cancelled"}


class _LiveCollector:
    """Numbers read at scrape time from the runtime, the model manager and the hub."""

    def __init__(self, facade: "AsyncRuntime", hub: "Hub") -> None:
        self.facade = facade
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runtime = self.facade.runtime
        running = len(runtime.running_prompt_ids())  # on the GPU and parked on the network lane
        prompts = GaugeMetricFamily("genesis_prompts", "Prompts in the queue by state", labels=["state"])
        prompts.add_metric(["pending"], max(0, runtime.queue_remaining - running))
        prompts.add_metric(["running"], running)
        yield prompts
        yield GaugeMetricFamily("genesis_websocket_clients", "Connected WebSocket clients", value=len(self.hub.clients))
        models = runtime.models
        yield CounterMetricFamily("genesis_model_loads", "Models loaded from disk", value=getattr(models, "loads", 0))
        yield CounterMetricFamily("genesis_model_load_seconds", "Time spent loading models",
                                  value=float(getattr(models, "load_seconds", 0.0)))
        memory = GaugeMetricFamily("genesis_model_memory_bytes", "Resident model memory by device",
                                   labels=["device"])
        by_device: dict[str, float] = {}
        for row in models.loaded_models():
            by_device[row.device] = by_device.get(row.device, 0) + row.size_bytes
        for device, size in sorted(by_device.items()):
            memory.add_metric([str(device)], float(size))
        yield memory


class ServerMetrics:
    """The metrics of one server (see the module docstring)."""

    def __init__(self, facade: "AsyncRuntime", hub: "Hub") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.http_requests = Counter("genesis_http_requests", "HTTP requests by route, method and status",
                                     ["route", "method", "status"], registry=r)
        self.prompts_queued = Counter("genesis_prompts_queued", "Prompts accepted into the queue", registry=r)
        self.prompts_finished = Counter("genesis_prompts_finished", "Prompts that left the queue, by final status",
                                        ["status"], registry=r)
        self.queue_wait = Histogram("genesis_queue_wait_seconds", "Time from queueing to the worker taking a prompt",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.run_time = Histogram("genesis_prompt_run_seconds", "Execution time of a prompt",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.node_time = Histogram("genesis_node_execution_seconds", "Execution time of one node, by class",
                                   ["class_type"], buckets=NODE_BUCKETS, registry=r)
        self.cache_hits = Counter("genesis_cache_hits", "Node outputs served from the output cache", registry=r)
        self.cache_misses = Counter("genesis_cache_misses", "Nodes executed because no cached output matched",
                                    registry=r)
        self.webhooks = Counter("genesis_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"],
                                registry=r)
        r.register(_LiveCollector(facade, hub))
        facade.on_finished(self.observe_outcome)
        facade.on_queued(lambda result: self.prompts_queued.inc())

    def observe_outcome(self, outcome: "JobOutcome") -> None:
        status = "removed" if outcome.status is None else FINISHED_LABELS.get(outcome.status.value,
                                                                               outcome.status.value)
        self.prompts_finished.labels(status).inc()
        if outcome.queued_seconds is not None:
            self.queue_wait.observe(outcome.queued_seconds)
        if outcome.run_seconds is not None:
            self.run_time.observe(outcome.run_seconds)
        report = outcome.report
        if report is not None:
            for run in report.node_runs.values():
                self.node_time.labels(run.class_type).observe(run.seconds)
            self.cache_hits.inc(len(report.cached))
            self.cache_misses.inc(len(report.executed))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[ServerMetrics] = web.AppKey("genesis_metrics", ServerMetrics)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by its route template (``/history/{prompt_id}``, not the id)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app.get(METRICS)
        if metrics is not None:
            route = request.match_info.route
            resource = route.resource if route is not None else None
            name = resource.canonical if resource is not None else "(unmatched)"
            metrics.http_requests.labels(name, request.method, str(status)).inc()


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

