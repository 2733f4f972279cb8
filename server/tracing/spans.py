"""One OpenTelemetry span per traced request, with Triton's timestamps as its events, exported over
OTLP/HTTP as Triton's `--trace-config mode=opentelemetry` does. The SDK is imported when the first
request is traced, so a server that never traces never loads it."""

import time
from dataclasses import dataclass, field

from server.core.stats import Timing
from server.tracing.settings import TraceSettings

DEFAULT_URL = "http://localhost:4318/v1/traces"
_PROCESSOR_OPTIONS = {  # --trace-config opentelemetry,<key>=<value> -> BatchSpanProcessor's argument
    "bsp_max_queue_size": "max_queue_size",
    "bsp_schedule_delay": "schedule_delay_millis",
    "bsp_max_export_batch_size": "max_export_batch_size",
}


@dataclass(frozen=True)
class OtlpExport:
    """Where and how spans go: `--trace-config opentelemetry,<key>=<value>` items."""

    url: str = DEFAULT_URL
    resource: tuple[tuple[str, str], ...] = (("service.name", "ortserve"),)
    batching: tuple[tuple[str, int], ...] = ()  # BatchSpanProcessor's arguments

    @classmethod
    def from_options(cls, options: dict[str, str]) -> "OtlpExport":
        """ValueError names an option that is not one."""
        options = dict(options)
        url = options.pop("url", DEFAULT_URL)
        resource = _resource(options.pop("resource", ""))
        unknown = set(options) - set(_PROCESSOR_OPTIONS)
        if unknown:
            raise ValueError(f"--trace-config opentelemetry: unknown option(s) {', '.join(sorted(unknown))}; "
                             f"the options are url, resource, {', '.join(_PROCESSOR_OPTIONS)}")
        try:
            batching = tuple((_PROCESSOR_OPTIONS[key], int(value)) for key, value in options.items())
        except ValueError:
            raise ValueError(f"--trace-config opentelemetry: {', '.join(options)} take integers") from None
        return cls(url if "://" in url else "http://" + url,  # Triton's examples give host:port/path
                   tuple(resource.items()), batching)


class Tracer:
    def __init__(self, settings: TraceSettings, export: OtlpExport = OtlpExport()):
        self.settings, self.export = settings, export
        self._provider = None
        self._tracer = None

    def start(self, model: str, protocol: str, traceparent: str = "", name: str = "InferRequest"
              ) -> "RequestTrace | None":
        """A trace of this request when its model's settings sample it, else None."""
        if not self.settings.sampled(model):
            return None
        return RequestTrace(self, name, model, protocol, traceparent)

    def shutdown(self) -> None:
        """Sends the spans still batched."""
        if self._provider is not None:
            self._provider.shutdown()

    def _otel_tracer(self):
        if self._tracer is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            self._provider = TracerProvider(resource=Resource.create(dict(self.export.resource)))
            exporter = OTLPSpanExporter(endpoint=self.export.url)
            processor = BatchSpanProcessor(exporter, **dict(self.export.batching))
            self._provider.add_span_processor(processor)
            self._tracer = self._provider.get_tracer("ortserve")
        return self._tracer


@dataclass
class RequestTrace:
    """A traced request's timestamps (perf_counter ns) until it ends and becomes a span."""

    tracer: Tracer
    name: str
    model: str
    protocol: str
    traceparent: str
    start_ns: int = field(default_factory=time.perf_counter_ns)
    events: list[tuple[str, int]] = field(default_factory=list)

    def mark(self, event: str) -> None:
        self.events.append((event, time.perf_counter_ns()))

    def end(self, version: str, timing: Timing | None = None, error: BaseException | None = None,
            **attributes) -> None:
        """Exports the span: REQUEST_START, the marks, the compute timestamps `timing` places after
        QUEUE_START (and a `compute` child span), REQUEST_END."""
        from opentelemetry.trace import Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        end_ns = time.perf_counter_ns()
        wall = time.time_ns() - end_ns  # perf_counter ns + wall = epoch ns
        events = [("REQUEST_START", self.start_ns), *self.events]
        compute = _compute_events(dict(self.events).get("QUEUE_START"), timing)
        events += compute + [("REQUEST_END", end_ns)]
        parent = None
        if self.traceparent:
            parent = TraceContextTextMapPropagator().extract({"traceparent": self.traceparent})
        tracer = self.tracer._otel_tracer()
        span = tracer.start_span(self.name, context=parent, start_time=self.start_ns + wall, attributes={
            "triton.model_name": self.model, "triton.model_version": version,
            "ortserve.protocol": self.protocol,
            **({"ortserve.batch_size": timing.batch_size} if timing and timing.batch_size else {}),
            **{f"ortserve.{key}": value for key, value in attributes.items() if value is not None},
        })
        for event, at in events:
            span.add_event(event, timestamp=at + wall)
        if compute:
            child = tracer.start_span("compute", context=set_span_in_context(span),
                                      start_time=compute[0][1] + wall)
            child.end(end_time=compute[-1][1] + wall)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        span.end(end_time=end_ns + wall)


def _compute_events(queue_start: int | None, timing: Timing | None) -> list[tuple[str, int]]:
    if queue_start is None or timing is None:
        return []
    compute_start = queue_start + timing.queue_ns
    input_end = compute_start + timing.input_ns
    output_start = input_end + timing.infer_ns
    return [("COMPUTE_START", compute_start), ("COMPUTE_INPUT_END", input_end),
            ("COMPUTE_OUTPUT_START", output_start), ("COMPUTE_END", output_start + timing.output_ns)]


def _resource(text: str) -> dict[str, str]:
    """`service.name=x,deployment=y,` -> attributes; service.name defaults to ortserve."""
    attributes = {"service.name": "ortserve"}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--trace-config opentelemetry,resource='{item}' must be <key>=<value>")
        attributes[key] = value
    return attributes
