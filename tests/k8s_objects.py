"""Helpers of the Kubernetes tests: schema validation of rendered objects and getters.

Validity is checked with the official client's models: ``__deserialize`` builds the typed model
(types and required fields are validated) and ``sanitize_for_serialization`` turns it back into
a dict. The deserializer silently drops keys it does not know, so the round trip must give back
exactly the original dict: a misspelled or misplaced field shows up as a difference.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client

MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("batch/v1", "CronJob"): "V1CronJob",
    ("batch/v1", "Job"): "V1Job",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "PersistentVolume"): "V1PersistentVolume",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
}
API = client.ApiClient()


def roundtrip(obj: dict[str, Any]) -> Any:
    """Deserialize ``obj`` into its client model and serialize it back."""
    model_name = MODELS[(obj["apiVersion"], obj["kind"])]
    model = API._ApiClient__deserialize(copy.deepcopy(obj), model_name)
    return API.sanitize_for_serialization(model)


def assert_valid(obj: dict[str, Any]) -> None:
    """``obj`` is a valid Kubernetes object of its kind, every field known to the model."""
    assert roundtrip(obj) == obj, f"{obj['kind']} {obj['metadata']}: fields lost in the model"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> pod spec of every CronJob and Job."""
    out = {}
    for obj in objects:
        if obj["kind"] == "CronJob":
            out[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = (
                obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif obj["kind"] == "Job":
            out["restore"] = obj["spec"]["template"]["spec"]
    return out


def job_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> Job spec of every CronJob and Job."""
    out = {}
    for obj in objects:
        if obj["kind"] == "CronJob":
            out[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = (
                obj["spec"]["jobTemplate"]["spec"])
        elif obj["kind"] == "Job":
            out["restore"] = obj["spec"]
    return out


def secret_names(pod: dict[str, Any]) -> set[str]:
    """Every Secret a pod reads (volumes, envFrom, env)."""
    [container] = pod["containers"]
    names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    names |= {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", ())
              if "valueFrom" in e}
    return names


def env_names(pod: dict[str, Any]) -> set[str]:
    """The names of a pod's env entries."""
    return {e["name"] for e in pod["containers"][0].get("env", ())}


def everything(options: Any = None) -> list[dict[str, Any]]:
    """The bundle, the Secret templates and the restore Job (of an example backup id when the
    options name none): every object the tests check, in one list."""
    import dataclasses

    from prefect_dr import k8s
    from prefect_dr.k8s.bundle import EXAMPLE_BACKUP_ID

    options = options or k8s.RenderOptions()
    if options.restore_backup_id is None:
        options = dataclasses.replace(options, restore_backup_id=EXAMPLE_BACKUP_ID)
    return [*k8s.render(options), *k8s.secret_templates(options), k8s.restore_job(options)]
