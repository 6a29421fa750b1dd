"""cluster/: where its files are, its KubeRay manifests parsed, the pod specs inside them."""

from __future__ import annotations

import yaml

from tests.helpers import REPO

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
SCRIPT = CLUSTER / "nightly.sh"
ENV_FILE = CLUSTER / "nightly.env"


def manifests() -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(KUBERAY.glob("*.yaml"))}


def pod_specs(node, where=""):
    """Every pod spec (a mapping with ``containers``) inside a manifest, with where it is."""
    if isinstance(node, dict):
        if "containers" in node:
            yield where, node
        for k, v in node.items():
            yield from pod_specs(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from pod_specs(v, f"{where}[{i}]")
