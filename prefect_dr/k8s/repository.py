"""How the jobs reach their repository, per backend: its settings in the ConfigMap, each job's
credential Secret, the cloud identity bound to each ServiceAccount, and for a ``file://``
repository the volume mounted at its path. Pure functions of :class:`RenderOptions` and of
the backend's ``Kubernetes`` facts in its storage registry descriptor (storage/registry.py):

- ``s3://``: a Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (envFrom), or IRSA
  (ServiceAccount annotation ``eks.amazonaws.com/role-arn``);
- ``azure://``: a Secret with ``AZURE_STORAGE_CONNECTION_STRING`` (or ``AZURE_STORAGE_ACCOUNT``
  and ``AZURE_STORAGE_KEY``; envFrom), or AKS workload identity (ServiceAccount annotation
  ``azure.workload.identity/client-id``, pod label ``azure.workload.identity/use: "true"``);
- ``gs://``: a Secret with a service account key ``key.json`` mounted as
  ``GOOGLE_APPLICATION_CREDENTIALS``, or GKE Workload Identity (ServiceAccount annotation
  ``iam.gke.io/gcp-service-account``);
- ``file://``: no credentials; a PersistentVolumeClaim or an NFS export mounted at the path.

A job with a workload identity gets no credential Secret.
"""

from __future__ import annotations

from typing import Any

from prefect_dr.k8s.options import (
    DEFAULT_VOLUME_CLAIM,
    PLACEHOLDER,
    ROLES,
    RenderOptions,
    credential_secrets,
    kubernetes,
    nfs_export,
    repository_url,
)
from prefect_dr.storage import registry

REPOSITORY_VOLUME = "repository"


def config_env(options: RenderOptions) -> dict[str, str]:
    """The repository's settings for the ConfigMap (no credentials: a URL never has any)."""
    url = repository_url(options)
    env: dict[str, str] = {}
    if options.repository:
        env["PREFECT_DR_REPOSITORY"] = str(url)
    else:  # the default backend's settings name the repository
        env.update((name, getattr(options, option)) for backend in registry.backends()
                   for name, option in backend.kubernetes.default_settings)
    shared = (pair for backend in registry.backends()
              for pair in backend.kubernetes.shared_settings)
    for name, option in (*kubernetes(options).settings, *shared):
        value = getattr(options, option)
        if value is not None:
            env[name] = value
    return env


def service_account_annotations(options: RenderOptions, role: str) -> dict[str, str]:
    """The annotation binding ``role``'s ServiceAccount to its cloud identity, if it has one."""
    identity = options.workload_identities.get(role)
    annotation = kubernetes(options).identity_annotation
    if identity is None or annotation is None:
        return {}
    return {annotation: identity}


def pod_labels(options: RenderOptions, role: str) -> dict[str, str]:
    """Labels the pod of ``role`` needs beyond the recommended ones (for a workload identity,
    the backend's: Azure's webhook acts on one)."""
    if role in options.workload_identities:
        return dict(kubernetes(options).identity_pod_labels)
    return {}


def add_to_pod(options: RenderOptions, role: str, *, env: list[dict[str, Any]],
               env_from: list[dict[str, Any]], mounts: list[dict[str, Any]],
               volumes: list[dict[str, Any]]) -> None:
    """Add what ``role`` needs to reach the repository to its container and pod."""
    url = repository_url(options)
    needs = kubernetes(options)
    secret = credential_secrets(options).get(role)
    if needs.volume:
        # Always a claim: Pod Security "restricted" rejects an nfs volume in a pod; an NFS
        # export is mounted through the PersistentVolume nfs_objects renders for it.
        volumes.append({"name": REPOSITORY_VOLUME, "persistentVolumeClaim": {
            "claimName": claim_name(options)}})
        mounts.append({"name": REPOSITORY_VOLUME, "mountPath": url.path})
    elif secret is None:
        return  # a workload, managed or node identity
    elif needs.key_file is not None:
        key = needs.key_file
        env.append({"name": key.env, "value": f"{key.directory}/{key.key}"})
        mounts.append({"name": key.volume, "mountPath": key.directory, "readOnly": True})
        volumes.append({"name": key.volume, "secret": {
            "secretName": secret, "defaultMode": 0o440,
            "items": [{"key": key.key, "path": key.key}]}})
    else:
        env_from.append({"secretRef": {"name": secret}})


def claim_name(options: RenderOptions) -> str:
    """The PersistentVolumeClaim every job mounts a file:// repository from."""
    if options.nfs:
        return f"{options.name}-repository"
    return options.volume_claim or DEFAULT_VOLUME_CLAIM


def nfs_objects(options: RenderOptions) -> list[dict[str, Any]]:
    """For ``nfs``: a PersistentVolume of the export (cluster-wide: its name carries the
    namespace) and the claim bound to it, so the pods mount a claim, which Pod Security
    "restricted" admits (an inline nfs volume it rejects). None otherwise."""
    nfs = nfs_export(options)
    if nfs is None:
        return []
    from prefect_dr.k8s.pods import labels

    volume = f"{options.namespace}-{options.name}-repository"
    meta = {"labels": labels(options, "repository"),
            "annotations": {"prefect-dr/description": f"NFS export {nfs[0]}:{nfs[1]} holding "
                                                      "the file:// repository"}}
    size = {"storage": "1Gi"}  # NFS ignores it; the API requires one
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume, **meta},
         "spec": {"capacity": size, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "mountOptions": ["hard", "nfsvers=4.1"],
                  "nfs": {"server": nfs[0], "path": nfs[1]},
                  "claimRef": {"namespace": options.namespace,
                               "name": claim_name(options)}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim_name(options), "namespace": options.namespace, **meta},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "volumeName": volume, "resources": {"requests": size}}},
    ]


def example_secrets(options: RenderOptions) -> list[tuple[str, str, str, dict[str, str]]]:
    """(role, Secret name, description, placeholder data) of each job's credential Secret."""
    needs = kubernetes(options)
    secrets = credential_secrets(options)
    return [(role, secrets[role], needs.secret_description.format(role=role),
             {key: value.format(placeholder=PLACEHOLDER)
              for key, value in needs.secret_data.items()})
            for role in ROLES if role in secrets]
