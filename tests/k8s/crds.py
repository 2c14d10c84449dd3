"""JSON schemas for the Prometheus operator's kinds (monitoring.coreos.com/v1), which the Kubernetes schemas lack.

A hand-written subset of the operator's CRDs: the fields they define at the levels k8s/ uses, typed, with unknown
fields refused (a typo fails as it would against the API server). Deeper objects (relabelings, TLS, auth) are only
checked to be objects or lists. Names follow prometheus-operator's API reference (v0.7x).
"""

from __future__ import annotations

from typing import Any

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJ = {"type": "object"}
LIST = {"type": "array"}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": LIST},
}
NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRING_MAP,
                   "annotations": STRING_MAP},
}
_SCRAPE = {  # fields shared by ServiceMonitor endpoints and PodMonitor podMetricsEndpoints
    "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
    "params": OBJ, "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"}, "trackTimestampsStaleness": {"type": "boolean"},
    "relabelings": LIST, "metricRelabelings": LIST, "tlsConfig": OBJ, "authorization": OBJ, "basicAuth": OBJ,
    "oauth2": OBJ, "proxyUrl": {"type": "string"}, "followRedirects": {"type": "boolean"},
    "enableHttp2": {"type": "boolean"}, "filterRunning": {"type": "boolean"}, "targetPort": {},
}
_MONITOR = {  # spec fields shared by ServiceMonitor and PodMonitor
    "jobLabel": {"type": "string"}, "selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR,
    "podTargetLabels": {"type": "array", "items": {"type": "string"}}, "sampleLimit": {"type": "integer"},
    "targetLimit": {"type": "integer"}, "labelLimit": {"type": "integer"}, "attachMetadata": OBJ,
    "scrapeProtocols": LIST, "keepDroppedTargets": {"type": "integer"},
}


def _kind(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind}, "metadata": METADATA,
            "spec": spec,
        },
    }


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


SCHEMAS = {
    "ServiceMonitor": _kind("ServiceMonitor", _object(
        ["selector", "endpoints"], **_MONITOR, targetLabels={"type": "array", "items": {"type": "string"}},
        endpoints={"type": "array", "minItems": 1, "items": _object(
            [], **_SCRAPE, bearerTokenFile={"type": "string"}, bearerTokenSecret=OBJ)},
    )),
    "PodMonitor": _kind("PodMonitor", _object(
        ["selector", "podMetricsEndpoints"], **_MONITOR,
        podMetricsEndpoints={"type": "array", "minItems": 1, "items": _object(
            [], **_SCRAPE, portNumber={"type": "integer"}, bearerTokenSecret=OBJ)},
    )),
    "PrometheusRule": _kind("PrometheusRule", _object(["groups"], groups={"type": "array", "items": _object(
        ["name", "rules"], name={"type": "string"}, interval=DURATION, query_offset=DURATION,
        limit={"type": "integer"}, partial_response_strategy={"type": "string"}, labels=STRING_MAP,
        rules={"type": "array", "minItems": 1, "items": {
            **_object(["expr"], record={"type": "string"}, alert={"type": "string"}, expr={"type": "string"},
                      labels=STRING_MAP, annotations=STRING_MAP, keep_firing_for=DURATION,
                      **{"for": DURATION}),
            "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
        }},
    )})),
}


def errors(obj: dict[str, Any]) -> list[str]:
    """Schema violations of a monitoring.coreos.com/v1 object; any other kind has no schema here (an error)."""
    schema = SCHEMAS.get(obj.get("kind", "")) if obj.get("apiVersion") == "monitoring.coreos.com/v1" else None
    if schema is None:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
