"""How the jobs reach their repository, per backend: its settings in the ConfigMap, each job's
credential Secret, the cloud identity bound to each ServiceAccount, and for a ``file://``
repository the volume mounted at its path. Pure functions of :class:`RenderOptions`.

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
    nfs_export,
    repository_url,
)

#: ServiceAccount annotation binding a workload identity, per backend.
IDENTITY_ANNOTATION = {
    "s3": "eks.amazonaws.com/role-arn",
    "azure": "azure.workload.identity/client-id",
    "gs": "iam.gke.io/gcp-service-account",
}
#: The pod label AKS's workload identity webhook acts on (it injects the token and AZURE_*).
AZURE_USE_LABEL = "azure.workload.identity/use"
GCS_KEY = "key.json"
GCS_KEY_DIR = "/etc/prefect-dr/gcp"
REPOSITORY_VOLUME = "repository"

_SECRET_DATA = {
    "s3": {"AWS_ACCESS_KEY_ID": PLACEHOLDER, "AWS_SECRET_ACCESS_KEY": PLACEHOLDER},
    # or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY
    "azure": {"AZURE_STORAGE_CONNECTION_STRING": (
        f"DefaultEndpointsProtocol=https;AccountName={PLACEHOLDER};AccountKey={PLACEHOLDER};"
        "EndpointSuffix=core.windows.net")},
    "gs": {GCS_KEY: "# from 'gcloud iam service-accounts keys create key.json "
                    "--iam-account NAME@PROJECT.iam.gserviceaccount.com'\n"
                    f"{PLACEHOLDER}\n"},
}
_SECRET_DESCRIPTION = {
    "s3": "S3 credentials of the {role} job only (docs/deploy.md: IAM policies)",
    "azure": "Azure Blob credentials of the {role} job only: a connection string, or "
             "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY (docs/deploy.md: Azure roles; "
             "prefer workload identity)",
    "gs": "Google service account key of the {role} job only, mounted as "
          "GOOGLE_APPLICATION_CREDENTIALS (docs/deploy.md: GCS roles; prefer Workload "
          "Identity)",
}


def config_env(options: RenderOptions) -> dict[str, str]:
    """The repository's settings for the ConfigMap (no credentials: a URL never has any)."""
    url = repository_url(options)
    env: dict[str, str] = {}
    if options.repository:
        env["PREFECT_DR_REPOSITORY"] = str(url)
    else:
        env.update({"PREFECT_DR_S3_BUCKET": options.bucket,
                    "PREFECT_DR_S3_PREFIX": options.prefix})
    if url.scheme == "s3":
        for name, value in (("PREFECT_DR_S3_ENDPOINT_URL", options.endpoint_url),
                            ("PREFECT_DR_S3_REGION", options.region)):
            if value is not None:
                env[name] = value
    if options.azure_account_url:
        env["PREFECT_DR_AZURE_ACCOUNT_URL"] = options.azure_account_url
    return env


def service_account_annotations(options: RenderOptions, role: str) -> dict[str, str]:
    """The annotation binding ``role``'s ServiceAccount to its cloud identity, if it has one."""
    identity = options.workload_identities.get(role)
    if identity is None:
        return {}
    return {IDENTITY_ANNOTATION[repository_url(options).scheme]: identity}


def pod_labels(options: RenderOptions, role: str) -> dict[str, str]:
    """Labels the pod of ``role`` needs beyond the recommended ones (Azure workload identity)."""
    if role in options.workload_identities and repository_url(options).scheme == "azure":
        return {AZURE_USE_LABEL: "true"}
    return {}


def add_to_pod(options: RenderOptions, role: str, *, env: list[dict[str, Any]],
               env_from: list[dict[str, Any]], mounts: list[dict[str, Any]],
               volumes: list[dict[str, Any]]) -> None:
    """Add what ``role`` needs to reach the repository to its container and pod."""
    url = repository_url(options)
    secret = credential_secrets(options).get(role)
    if url.scheme == "file":
        # Always a claim: Pod Security "restricted" rejects an nfs volume in a pod; an NFS
        # export is mounted through the PersistentVolume nfs_objects renders for it.
        volumes.append({"name": REPOSITORY_VOLUME, "persistentVolumeClaim": {
            "claimName": claim_name(options)}})
        mounts.append({"name": REPOSITORY_VOLUME, "mountPath": url.path})
    elif secret is None:
        return  # a workload, managed or node identity
    elif url.scheme == "gs":
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                    "value": f"{GCS_KEY_DIR}/{GCS_KEY}"})
        mounts.append({"name": "gcp-key", "mountPath": GCS_KEY_DIR, "readOnly": True})
        volumes.append({"name": "gcp-key", "secret": {
            "secretName": secret, "defaultMode": 0o440,
            "items": [{"key": GCS_KEY, "path": GCS_KEY}]}})
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
    scheme = repository_url(options).scheme
    secrets = credential_secrets(options)
    return [(role, secrets[role], _SECRET_DESCRIPTION[scheme].format(role=role),
             dict(_SECRET_DATA[scheme]))
            for role in ROLES if role in secrets]
