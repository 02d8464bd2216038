"""Checks Prometheus Operator resources (ServiceMonitor, PodMonitor, PrometheusRule) in YAML
files against the operator's API models (PyPI: cloudcoil-models-prometheus-operator), strictly:
an unknown field is an error, as `kubernetes-validate --strict` treats built-in kinds (which
has no schema for custom resources).

Usage: check_monitoring_resources.py FILE...; one line per error, exit status 1 on any.
"""

import sys

import jsonschema
import yaml
from cloudcoil.models.prometheus_operator import v1

MODELS = {
    "ServiceMonitor": v1.ServiceMonitor,
    "PodMonitor": v1.PodMonitor,
    "PrometheusRule": v1.PrometheusRule,
}


def strict(node):
    """Forbids properties an object schema does not declare (the models allow them)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


def main(paths):
    errors = 0
    checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            model = MODELS.get(kind)
            if model is None:
                print(f"{path}: kind {kind!r} is not a Prometheus Operator resource")
                errors += 1
                continue
            name = (doc.get("metadata") or {}).get("name")
            schema = strict(model.model_json_schema(by_alias=True))
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                where = ".".join(str(p) for p in e.absolute_path) or "(document)"
                print(f"{path}: {kind}/{name}: {where}: {e.message}")
                errors += 1
            checked += 1
    if checked == 0 and errors == 0:
        print("no resources to check")
        errors = 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
