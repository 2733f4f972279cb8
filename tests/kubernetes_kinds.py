"""The custom kinds ortserve's manifests use, checked against the fields their projects publish: KServe's
ServingRuntime / InferenceService (serving.kserve.io, its Go API types and CRDs) and the Gateway API
Inference Extension's InferencePool (inference.networking.k8s.io/v1 CRD), written here as JSON schemas of
the fields ortserve sets, unknown fields refused. Containers are checked as Kubernetes' own core/v1
Container (inside a Pod) by kubernetes-validate."""

import jsonschema
import kubernetes_validate

STRING = {"type": "string"}
LABELS = {"type": "object", "additionalProperties": STRING}


def _object(properties: dict, required=(), open_=False) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": open_}


METADATA = _object({"name": STRING, "namespace": STRING, "labels": LABELS, "annotations": LABELS},
                   required=["name"])
MODEL_FORMAT = _object({"name": STRING, "version": STRING, "autoSelect": {"type": "boolean"},
                        "priority": {"type": "integer", "minimum": 1}}, required=["name"])
SERVING_RUNTIME_SPEC = _object({
    "annotations": LABELS, "labels": LABELS, "nodeSelector": LABELS,
    "supportedModelFormats": {"type": "array", "items": MODEL_FORMAT},
    "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
    "multiModel": {"type": "boolean"}, "disabled": {"type": "boolean"},
    "grpcEndpoint": STRING, "grpcDataEndpoint": STRING, "httpDataEndpoint": STRING,
    "replicas": {"type": "integer"},
    "containers": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    "volumes": {"type": "array"}, "tolerations": {"type": "array"}, "imagePullSecrets": {"type": "array"},
    "affinity": {"type": "object"},
}, required=["containers"])
INFERENCE_SERVICE_SPEC = _object({
    "predictor": _object({
        "model": _object({
            "modelFormat": _object({"name": STRING, "version": STRING}, required=["name"]),
            "runtime": STRING, "storageUri": STRING,
            "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
            "resources": {"type": "object"}, "args": {"type": "array"}, "env": {"type": "array"},
        }, required=["modelFormat"]),
        "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"},
    }, required=["model"]),
}, required=["predictor"])
PORT = _object({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}, required=["number"])
INFERENCE_POOL_SPEC = _object({
    "selector": _object({"matchLabels": LABELS}, required=["matchLabels"]),
    "targetPorts": {"type": "array", "minItems": 1, "maxItems": 1, "items": PORT},
    "endpointPickerRef": _object({
        "name": {"type": "string", "minLength": 1}, "kind": STRING, "group": STRING, "port": PORT,
        "failureMode": {"enum": ["FailOpen", "FailClose"]},
    }, required=["name"]),
}, required=["selector", "targetPorts", "endpointPickerRef"])


def _kind(api_version: str, kind: str, spec: dict) -> dict:
    return _object({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                    "spec": spec}, required=["apiVersion", "kind", "metadata", "spec"])


CUSTOM_KINDS = {
    "ClusterServingRuntime": _kind("serving.kserve.io/v1alpha1", "ClusterServingRuntime",
                                   SERVING_RUNTIME_SPEC),
    "ServingRuntime": _kind("serving.kserve.io/v1alpha1", "ServingRuntime", SERVING_RUNTIME_SPEC),
    "InferenceService": _kind("serving.kserve.io/v1beta1", "InferenceService", INFERENCE_SERVICE_SPEC),
    "InferencePool": _kind("inference.networking.k8s.io/v1", "InferencePool", INFERENCE_POOL_SPEC),
}


def validate_custom(document: dict) -> None:
    """Raises on a field the kind does not have, a wrong type or value, a missing required field."""
    jsonschema.validate(document, CUSTOM_KINDS[document["kind"]])
    containers = document["spec"].get("containers")
    if containers:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
               "spec": {"containers": containers}}
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
