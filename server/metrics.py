"""Prometheus metrics in Triton's names, read at scrape time from the statistics the core keeps.

A collector over the same ModelStats that the statistics extension reports: the two always agree, and
the request path pays nothing for metrics.
"""

import logging

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from server.core.stats import FAILURE_REASONS, Histogram
from server.core.types import FinishReason
from server.service.services import Service

log = logging.getLogger(__name__)

LABELS = ["model", "version"]
# Triton's cumulative durations: (metric, ModelStats attribute, help)
DURATIONS = (
    ("nv_inference_queue_duration_us", "queue", "Cumulative inference queuing duration in microseconds"),
    (
        "nv_inference_compute_input_duration_us",
        "compute_input",
        "Cumulative compute input duration in microseconds",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "compute_infer",
        "Cumulative compute inference duration in microseconds",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "compute_output",
        "Cumulative inference compute output duration in microseconds",
    ),
)
HISTOGRAMS = (
    ("ortserve_request_duration_seconds", "request_seconds", "End-to-end request duration"),
    ("ortserve_queue_duration_seconds", "queue_seconds", "Time a request waited in the model's queue"),
    ("ortserve_compute_duration_seconds", "compute_seconds", "Duration of one model execution"),
    ("ortserve_batch_size", "batch_size", "Items per model execution"),
)


GENERATION_HISTOGRAMS = (
    ("ortserve_time_to_first_token_seconds", "time_to_first_token", "Time from request to first token"),
    ("ortserve_inter_token_latency_seconds", "inter_token", "Time between a sequence's tokens"),
    ("ortserve_generation_request_duration_seconds", "request_seconds", "Time from request to last token"),
)
GENERATION_COUNTERS = (
    ("ortserve_prompt_tokens_total", "prompt_tokens", "Prompt tokens admitted"),
    ("ortserve_generation_tokens_total", "generated_tokens", "Tokens generated"),
    ("ortserve_prefix_cache_hits_total", "prefix_hits", "Prompts that reused cached prefix blocks"),
    ("ortserve_prefix_cache_misses_total", "prefix_misses", "Prompts that found no cached prefix block"),
    ("ortserve_prefix_cache_reused_tokens_total", "prefix_tokens_reused", "Prompt tokens not prefilled"),
    ("ortserve_draft_tokens_total", "draft_tokens", "Tokens drafted by prompt lookup and checked"),
    ("ortserve_draft_tokens_accepted_total", "accepted_draft_tokens",
     "Drafted tokens the model's own choice agreed with"),
)
GENERATION_GAUGES = (
    ("ortserve_generation_running_sequences", "running", "Sequences in the running batch"),
    ("ortserve_generation_waiting_sequences", "waiting", "Sequences waiting to start"),
    ("ortserve_kv_cache_tokens", "cache_tokens", "KV cache positions in use (rows x length)"),
    ("ortserve_prefix_cache_bytes", "prefix_cache_bytes", "Bytes of keys and values the prefix cache holds"),
)
SEQUENCE_COUNTERS = (
    ("ortserve_sequences_started_total", "started", "Sequences started (requests with sequence_start)"),
    ("ortserve_sequences_ended_total", "ended", "Sequences ended by a request with sequence_end"),
    ("ortserve_sequences_idle_released_total", "idle_released",
     "Sequences released after max_sequence_idle_microseconds without a request"),
    ("ortserve_sequence_requests_total", "requests", "Requests admitted to a sequence"),
)
SEQUENCE_GAUGES = (
    ("ortserve_sequences_live", "live", "Live sequences (with a slot or waiting for one)"),
    ("ortserve_sequences_backlog", "backlogged", "Live sequences waiting for a batch slot"),
)
CACHE_COUNTERS = (  # name, ModelStats duration, its field, help
    ("nv_cache_num_hits_per_model", "cache_hit", "count", "Number of response cache hits per model"),
    ("nv_cache_num_misses_per_model", "cache_miss", "count", "Number of response cache misses per model"),
    ("nv_cache_hit_duration_per_model", "cache_hit", "ns",
     "Total response cache hit duration per model, in microseconds"),
    ("nv_cache_miss_duration_per_model", "cache_miss", "ns",
     "Total response cache miss duration per model, in microseconds"),
)
TEXT_COUNTERS = (
    ("ortserve_text_inputs_total", "texts", "Texts tokenized by the server for encoder models"),
    ("ortserve_text_tokens_total", "tokens", "Tokens of the texts tokenized by the server"),
    ("ortserve_text_truncated_total", "truncated", "Texts cut to the model's length on request"),
)


class ServerCollector:
    def __init__(self, service: Service):
        self.statistics = service.statistics
        self._cpu_sample = _cpu_times()

    def collect(self):
        models = self.statistics.served_models()
        yield from self._triton_counters(models)
        yield from self._histograms(models)
        yield from self._gauges(models)
        yield from self._generation([m for m in models if m.engine is not None])
        yield from self._inference_gateway([m for m in models if m.engine is not None])
        yield from self._sequences([m for m in models if m.sequences is not None and m.scheduler])
        yield from self._text([m for m in models if m.text is not None])
        yield from self._cache([m for m in models if m.config.response_cache.enable])
        yield from self._system()

    def _triton_counters(self, models):
        success = _Counter(
            "nv_inference_request_success",
            "Number of successful inference requests, all batch sizes",
            labels=LABELS,
        )
        failure = _Counter(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            labels=LABELS + ["reason"],
        )
        count = _Counter(
            "nv_inference_count", "Number of inferences performed (a batch of n counts n)", labels=LABELS
        )
        executions = _Counter(
            "nv_inference_exec_count", "Number of model executions performed", labels=LABELS
        )
        request = _Counter(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds",
            labels=LABELS,
        )
        durations = [_Counter(name, text, labels=LABELS) for name, _, text in DURATIONS]
        protocols = _Counter(
            "ortserve_inference_requests_total",
            "Inference requests by front end and outcome",
            labels=LABELS + ["protocol", "outcome"],
        )
        for model in models:
            labels, stats = [model.name, str(model.version)], model.stats
            success.add_metric(labels, stats.success.count)
            for reason in FAILURE_REASONS:
                failure.add_metric(labels + [reason], stats.failures[reason])
            count.add_metric(labels, stats.inference_count)
            executions.add_metric(labels, stats.execution_count)
            request.add_metric(labels, (stats.success.ns + stats.fail.ns) / 1000)
            for family, (_, attribute, _) in zip(durations, DURATIONS):
                family.add_metric(labels, getattr(stats, attribute).ns / 1000)
            for (protocol, outcome), value in list(stats.requests_by_protocol.items()):
                protocols.add_metric(labels + [protocol, outcome], value)
        yield from (success, failure, count, executions, request, *durations, protocols)

    def _cache(self, models):
        """Triton's per-model response cache counters, for the models whose config enables the cache."""
        families = [_Counter(name, text, labels=LABELS) for name, *_, text in CACHE_COUNTERS]
        for model in models:
            labels = [model.name, str(model.version)]
            for family, (_, attribute, field, _) in zip(families, CACHE_COUNTERS):
                value = getattr(getattr(model.stats, attribute), field)
                family.add_metric(labels, value / 1000 if field == "ns" else value)
        yield from families

    def _histograms(self, models):
        for name, attribute, text in HISTOGRAMS:
            yield _histogram(name, text, models, lambda model, a=attribute: getattr(model.stats, a))

    def _gauges(self, models):
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=LABELS,
        )
        load = GaugeMetricFamily("nv_model_load_duration_secs", "Model load time in seconds", labels=LABELS)
        for model in models:
            labels = [model.name, str(model.version)]
            queued = model.scheduler.queued if model.scheduler else model.stats.generation.waiting
            pending.add_metric(labels, queued)
            load.add_metric(labels, self.statistics.load_seconds(model.name))
        yield from (pending, load)

    def _generation(self, models):
        for name, attribute, text in GENERATION_HISTOGRAMS:
            yield _histogram(
                name, text, models, lambda model, a=attribute: getattr(model.stats.generation, a)
            )
        counters = [_Counter(name, text, labels=LABELS) for name, _, text in GENERATION_COUNTERS]
        gauges = [GaugeMetricFamily(name, text, labels=LABELS) for name, _, text in GENERATION_GAUGES]
        finished = _Counter("ortserve_generation_finished_total", "Generation requests by finish reason",
                            labels=LABELS + ["finish_reason"])
        for model in models:
            labels, stats = [model.name, str(model.version)], model.stats.generation
            for family, (_, attribute, _) in zip(counters, GENERATION_COUNTERS):
                family.add_metric(labels, getattr(stats, attribute))
            for family, (_, attribute, _) in zip(gauges, GENERATION_GAUGES):
                family.add_metric(labels, getattr(stats, attribute))
            for reason in FinishReason:
                finished.add_metric(labels + [reason.value], stats.finished.get(reason, 0))
        yield from (*counters, *gauges, finished)

    def _inference_gateway(self, models):
        """The gauges Kubernetes' inference gateway (its endpoint picker) reads, under the names it reads
        for vLLM by default, per model (its newest served version)."""
        labels = ["model_name"]
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to start", labels=labels)
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests running", labels=labels)
        share_of_capacity = "Share of the engine's token capacity in use (1: full)"
        usage = [GaugeMetricFamily(name, share_of_capacity, labels=labels)  # the name, and its older one
                 for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")]
        info = GaugeMetricFamily("vllm:cache_config_info", "The KV cache's configuration, in its labels",
                                 labels=labels + ["block_size", "num_gpu_blocks"])
        newest = {model.name: model for model in sorted(models, key=lambda m: m.version)}
        for name, model in newest.items():
            stats = model.stats.generation
            waiting.add_metric([name], stats.waiting)
            running.add_metric([name], stats.running)
            share = stats.context_tokens / stats.token_capacity if stats.token_capacity else 0.0
            for family in usage:
                family.add_metric([name], share)
            blocks = stats.token_capacity // stats.block_size
            info.add_metric([name, str(stats.block_size), str(blocks)], 1)
        yield from (waiting, running, *usage, info)

    def _sequences(self, models):
        counters = [_Counter(name, text, labels=LABELS) for name, _, text in SEQUENCE_COUNTERS]
        gauges = [GaugeMetricFamily(name, text, labels=LABELS) for name, _, text in SEQUENCE_GAUGES]
        for model in models:
            labels = [model.name, str(model.version)]
            for family, (_, attribute, _) in zip(counters, SEQUENCE_COUNTERS):
                family.add_metric(labels, getattr(model.stats.sequences, attribute))
            for family, (_, attribute, _) in zip(gauges, SEQUENCE_GAUGES):
                family.add_metric(labels, getattr(model.scheduler, attribute))
        yield from (*counters, *gauges)

    def _text(self, models):
        counters = [_Counter(name, text, labels=LABELS) for name, _, text in TEXT_COUNTERS]
        duration = _Counter("ortserve_text_tokenize_duration_us",
                            "Cumulative server-side tokenization duration in microseconds", labels=LABELS)
        for model in models:
            labels, stats = [model.name, str(model.version)], model.stats.text
            for family, (_, attribute, _) in zip(counters, TEXT_COUNTERS):
                family.add_metric(labels, getattr(stats, attribute))
            duration.add_metric(labels, stats.tokenize.ns / 1000)
        yield from (*counters, duration)

    def _system(self):
        sample = _cpu_times()
        busy, total = (now - before for now, before in zip(sample, self._cpu_sample))
        self._cpu_sample = sample
        cpu = GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]")
        cpu.add_metric([], busy / total if total else 0.0)
        used, available = _memory()
        memory_total = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes")
        memory_total.add_metric([], used + available)
        memory_used = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes")
        memory_used.add_metric([], used)
        yield from (cpu, memory_total, memory_used)
        yield from _gpu_metrics()


def _histogram(name: str, text: str, models, histogram_of) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=LABELS)
    for model in models:
        histogram: Histogram = histogram_of(model)
        buckets = [(_bound(b), c) for b, c in histogram.cumulative()] + [("+Inf", histogram.total)]
        family.add_metric([model.name, str(model.version)], buckets, histogram.sum)
    return family


class _Counter(Metric):
    """A counter under its exact name: Triton's counters carry no `_total` suffix."""

    def __init__(self, name: str, documentation: str, labels: list[str]):
        super().__init__(name, documentation, "counter")
        self._labels = labels

    def add_metric(self, values: list[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labels, values)), value)


def exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus text format, writing each sample under the name it was given."""
    lines = []
    for family in registry.collect():
        lines.append(f"# HELP {family.name} {family.documentation}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(sample.labels.items()))
            lines.append(
                f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}"
                if labels
                else f"{sample.name} {floatToGoString(sample.value)}"
            )
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and value >= 1 else repr(float(value))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; zeros where there is no /proc."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _memory() -> tuple[int, int]:
    """(used, available) bytes from /proc/meminfo."""
    values = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    available = values.get("MemAvailable", 0)
    return values.get("MemTotal", 0) - available, available


def _gpu_metrics():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no GPU: Triton leaves the GPU metrics out as well
        return
    utilization = GaugeMetricFamily(
        "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0]", labels=["gpu_uuid"]
    )
    used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
    total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"])
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization.add_metric([uuid], pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        used.add_metric([uuid], memory.used)
        total.add_metric([uuid], memory.total)
    yield from (utilization, used, total)


def create_metrics_app(service: Service) -> FastAPI:
    """The /metrics endpoint on its own port; one CollectorRegistry per server, made here."""
    prometheus = CollectorRegistry(auto_describe=False)
    prometheus.register(ServerCollector(service))
    app = FastAPI(title="ortserve metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def metrics():
        return Response(exposition(prometheus), media_type=CONTENT_TYPE_LATEST)

    return app
