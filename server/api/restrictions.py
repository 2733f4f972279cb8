"""Triton's restricted APIs: groups of endpoints that answer only requests carrying a given header.

`--http-restricted-api model-repository,statistics:admin-key=secret` makes those groups refuse, with 403,
HTTP requests without the header `admin-key: secret`. `--grpc-restricted-protocol` does the same for gRPC
as Triton does: the metadata key is `triton-grpc-protocol-admin-key`, a call without it UNAVAILABLE.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
          "statistics", "trace", "logging")


GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True)
class Restrictions:
    rules: dict[str, tuple[str, str]] = field(default_factory=dict)  # group -> (header, value)
    what: str = "API"  # Triton's word in the refusal: "API" over HTTP, "protocol" over gRPC

    @classmethod
    def parse(cls, specs: list[str], flag: str, grpc: bool = False) -> "Restrictions":
        """From Triton's `<group>[,<group>...]:<key>=<value>` specs; ValueError says what is wrong."""
        rules = {}
        for spec in specs:
            groups, _, header = spec.partition(":")
            key, _, value = header.partition("=")
            if not key.strip() or not value:
                raise ValueError(f"{flag} '{spec}' must be <api>[,<api>...]:<header>=<value>")
            for group in (g.strip() for g in groups.split(",")):
                if group not in GROUPS:
                    raise ValueError(f"{flag}: unknown API '{group}'; the APIs are {', '.join(GROUPS)}")
                if group in rules:
                    raise ValueError(f"{flag}: API '{group}' is restricted twice")
                prefix = GRPC_HEADER_PREFIX if grpc else ""
                rules[group] = (prefix + key.strip().lower(), value)
        return cls(rules, "protocol" if grpc else "API")

    def refusal(self, group: str, headers: Mapping[str, str]) -> str | None:
        """None when the request may pass, else why not (the headers' keys in lower case)."""
        rule = self.rules.get(group)
        if rule is None or headers.get(rule[0]) == rule[1]:
            return None
        return f"This {self.what} is restricted, expecting header '{rule[0]}'"


NO_RESTRICTIONS = Restrictions()

_HTTP_GROUPS = [  # (method or None for any, path pattern, group), first match wins; inference first
    (None, r"/v2/models/[^/]+(/versions/[^/]+)?/(infer|generate|generate_stream)|/v1/.*|/v2/rerank",
     "inference"),
    (None, r"(/tei/[^/]+)?/(embed|embed_all|similarity|rerank|predict|tokenize|decode)",
     "inference"),  # TEI's
    (None, r"/detokenize|/score", "inference"),  # vLLM's
    (None, r"/api/(chat|generate|embed|embeddings)", "inference"),  # Ollama's
    (None, r"/v2/health/.*|/v2/models/[^/]+(/versions/[^/]+)?/ready|/health", "health"),
    (None, r"/v2/repository/.*", "model-repository"),
    (None, r"/v2/(system|cuda)sharedmemory(/.*)?", "shared-memory"),
    (None, r"/v2/models/stats|/v2/models/[^/]+(/versions/[^/]+)?/stats", "statistics"),
    (None, r"/v2/models/[^/]+(/versions/[^/]+)?/config", "model-config"),
    (None, r"/v2(/models/[^/]+)?(/versions/[^/]+)?/trace/setting", "trace"),
    (None, r"/v2/logging", "logging"),
    ("GET", r"/v2|/v2/models/[^/]+(/versions/[^/]+)?|(/tei/[^/]+)?/info", "metadata"),
    (None, r"/api/(tags|ps|show|version)", "metadata"),  # Ollama's
]
_HTTP = [(method, re.compile(pattern), group) for method, pattern, group in _HTTP_GROUPS]


def http_group(method: str, path: str) -> str | None:
    for wanted, pattern, group in _HTTP:
        if (wanted is None or wanted == method) and pattern.fullmatch(path):
            return group
    return None


GRPC_GROUPS = {
    "ServerLive": "health", "ServerReady": "health", "ModelReady": "health", "Check": "health",
    "Watch": "health", "ServerMetadata": "metadata", "ModelMetadata": "metadata", "ModelInfer": "inference",
    "ModelStreamInfer": "inference", "ModelConfig": "model-config", "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository", "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository", "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory", "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory", "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory", "TraceSetting": "trace", "LogSettings": "logging",
}


def grpc_group(method: str) -> str | None:
    """`/inference.GRPCInferenceService/ModelInfer` -> "inference"."""
    return GRPC_GROUPS.get(method.rsplit("/", 1)[-1])
