"""Trace settings as Triton's trace extension keeps them: global ones (from `--trace-config`), overridden
per model at run time, each scope sampling its own requests."""

from dataclasses import dataclass, replace

from server.core.errors import InvalidArgument
from server.core.fields import integer

MODES = ("opentelemetry",)
_MINIMUM = {"trace_rate": 1, "trace_count": -1, "log_frequency": 0}
KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode")


@dataclass
class TraceSetting:
    trace_level: str = "OFF"  # OFF or TIMESTAMPS
    trace_rate: int = 1000  # one request in this many is traced
    trace_count: int = -1  # traces left to take (-1: no end); counts down as requests are traced
    log_frequency: int = 0
    trace_file: str = ""
    trace_mode: str = "opentelemetry"

    def as_json(self) -> dict:
        """Triton's form: the level a list, every other value a string."""
        return {
            "trace_level": [self.trace_level],
            "trace_rate": str(self.trace_rate),
            "trace_count": str(self.trace_count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.trace_file,
            "trace_mode": self.trace_mode,
        }


class _Scope:
    """One setting and the requests it has seen: the first, then one in every `trace_rate`, is traced
    while `trace_count` lasts."""

    def __init__(self, setting: TraceSetting):
        self.setting, self.seen = setting, 0

    def sample(self) -> bool:
        setting = self.setting
        if setting.trace_level == "OFF" or setting.trace_count == 0:
            return False
        self.seen += 1
        if (self.seen - 1) % setting.trace_rate:
            return False
        if setting.trace_count > 0:
            setting.trace_count -= 1
        return True


class TraceSettings:
    def __init__(self, startup: TraceSetting):
        self._startup = startup
        self._global = _Scope(replace(startup))
        self._models: dict[str, tuple[dict, _Scope]] = {}  # model -> (its overrides, its scope)
        self.on = False  # whether any scope traces: the one check an untraced request pays
        self._refresh()

    def sampled(self, model: str) -> bool:
        if not self.on:
            return False
        entry = self._models.get(model)
        return (entry[1] if entry is not None else self._global).sample()

    def get(self, model: str = "") -> dict:
        entry = self._models.get(model) if model else None
        return (entry[1] if entry is not None else self._global).setting.as_json()

    def update(self, model: str, changes: dict) -> dict:
        """Applies Triton's update: each key set to a value, or to None (an empty list over gRPC) to
        clear it (a model's falls back to the global one, a global one to its value at start)."""
        values = {key: _checked(key, value) for key, value in changes.items()}
        if model:
            overrides = {**self._models.get(model, ({}, None))[0], **values}
            overrides = {key: value for key, value in overrides.items() if value is not None}
            if overrides:
                setting = replace(self._global.setting, **overrides)
                self._models[model] = (overrides, _Scope(setting))
            else:
                self._models.pop(model, None)
        else:
            startup = {key: getattr(self._startup, key) for key, value in values.items() if value is None}
            kept = {key: value for key, value in values.items() if value is not None}
            self._global = _Scope(replace(self._global.setting, **startup, **kept))
            for name, (overrides, _) in self._models.items():
                self._models[name] = (overrides, _Scope(replace(self._global.setting, **overrides)))
        self._refresh()
        return self.get(model)

    def _refresh(self) -> None:
        scopes = [self._global, *(scope for _, scope in self._models.values())]
        self.on = any(scope.setting.trace_level != "OFF" for scope in scopes)


def setting_from_config(items: list[str]) -> tuple[TraceSetting, dict[str, str]]:
    """The startup setting and the OpenTelemetry options from `--trace-config` items, as Triton writes
    them: `level=TIMESTAMPS`, `rate=1`, `count=-1`, `mode=opentelemetry`,
    `opentelemetry,url=http://collector:4318/v1/traces`, `opentelemetry,resource=service.name=x`,
    `opentelemetry,bsp_schedule_delay=5000`. ValueError says what is wrong."""
    setting, otel = TraceSetting(), {}
    names = {"level": "trace_level", "rate": "trace_rate", "count": "trace_count",
             "log-frequency": "log_frequency", "log_frequency": "log_frequency", "mode": "trace_mode"}
    for item in items:
        section, _, pair = item.rpartition(",")
        key, equals, value = pair.partition("=")
        if not equals:
            raise ValueError(f"--trace-config '{item}' must be [<mode>,]<setting>=<value>")
        if section == "opentelemetry":
            otel[key] = value if key != "resource" else otel.get("resource", "") + value + ","
            continue
        if section == "triton":
            raise ValueError(f"--trace-config '{item}': trace mode 'triton' (trace files) is not served; "
                             "ortserve traces through OpenTelemetry (mode=opentelemetry)")
        if section or key not in names:
            raise ValueError(f"--trace-config '{item}': unknown setting; ortserve takes level, rate, count, "
                             "mode and opentelemetry,<url|resource|bsp_*>=...")
        try:
            setting = replace(setting, **{names[key]: _checked(names[key], value)})
        except InvalidArgument as error:
            raise ValueError(f"--trace-config '{item}': {error.message}") from None
    return setting, otel


def _checked(key: str, value):
    """A trace setting's value from Triton's JSON / gRPC forms (strings, the level a list)."""
    if value is None or value == []:
        return None
    if key not in KEYS:
        raise InvalidArgument(f"unknown trace setting '{key}'; the settings are {', '.join(KEYS)}")
    if isinstance(value, list):
        if len(value) != 1 and key != "trace_level":
            raise InvalidArgument(f"trace setting '{key}' takes one value, got {value}")
        value = value if key == "trace_level" else value[0]
    if key == "trace_level":
        return _level(value if isinstance(value, list) else [value])
    if key in ("trace_rate", "trace_count", "log_frequency"):
        return _number(key, value)
    if not isinstance(value, str):
        raise InvalidArgument(f"trace setting '{key}' must be a string, got {value!r}")
    if key == "trace_mode" and value not in MODES:
        raise InvalidArgument(f"trace_mode '{value}' is not served: ortserve traces through OpenTelemetry "
                              "only (trace_mode 'opentelemetry', spans sent to an OTLP endpoint)")
    if key == "trace_file" and value:
        raise InvalidArgument("trace_file is not used in trace mode 'opentelemetry': spans go to the OTLP "
                              "endpoint (--trace-config opentelemetry,url=...)")
    return value


def _level(values: list) -> str:
    levels = {str(v).upper() for v in values}
    unknown = levels - {"OFF", "TIMESTAMPS", "TENSORS"}
    if unknown:
        raise InvalidArgument(f"trace_level {sorted(unknown)} is not a level: OFF, TIMESTAMPS or TENSORS")
    if "TENSORS" in levels:
        raise InvalidArgument("trace_level TENSORS (tensor contents in traces) is not served by ortserve; "
                              "use TIMESTAMPS")
    if levels == {"OFF", "TIMESTAMPS"}:
        raise InvalidArgument("trace_level cannot be OFF and TIMESTAMPS at once")
    return "TIMESTAMPS" if "TIMESTAMPS" in levels else "OFF"


def _number(key: str, value) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # Triton's settings travel as strings
    number = integer(value, f"trace setting '{key}'", _MINIMUM[key])
    if key == "log_frequency" and number:
        raise InvalidArgument("log_frequency applies to trace files; in trace mode 'opentelemetry' spans "
                              "are batched to the OTLP endpoint (--trace-config "
                              "opentelemetry,bsp_schedule_delay=<ms>)")
    return number
