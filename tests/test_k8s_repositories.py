"""k8s render for every repository backend: s3:// (keys or IRSA), azure:// (a connection string
Secret or AKS workload identity), gs:// (a key file Secret or GKE Workload Identity) and file://
(a PersistentVolumeClaim or an NFS export). Every object stays a valid Kubernetes object, each
job gets only its own credentials, and no secret value is ever written into the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_objects import assert_valid, by_kind, env_names, everything, secret_names

from prefect_dr import config, crypto, k8s

ROOT = Path(__file__).resolve().parents[1]
RECIPIENT = crypto.generate_identity()[1]
CLIENT_ID = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
AZURE = "azure://prefect-dr/prod"
ACCOUNT_URL = "https://acmebackups.blob.core.windows.net"
GS = "gs://acme-prefect-backups/prod"
ROLES = ("backup", "prune", "verify", "restore")


def gsa(role: str) -> str:
    return f"prefect-dr-{role}@acme-prod.iam.gserviceaccount.com"


CASES: dict[str, k8s.RenderOptions] = {
    "s3-irsa": k8s.RenderOptions(
        repository="s3://acme-prefect-backups/prod?region=eu-west-1",
        workload_identities={r: f"arn:aws:iam::123456789012:role/prefect-dr-{r}"
                             for r in ROLES}),
    "azure-secrets": k8s.RenderOptions(repository=AZURE),
    "azure-identity": k8s.RenderOptions(
        repository=AZURE, azure_account_url=ACCOUNT_URL,
        workload_identities={"backup": CLIENT_ID, "prune": CLIENT_ID.replace("0a", "1a")}),
    "gs-key": k8s.RenderOptions(repository=GS),
    "gs-identity": k8s.RenderOptions(repository=GS,
                                     workload_identities={r: gsa(r) for r in ROLES}),
    "file-claim": k8s.RenderOptions(repository="file:///backups", volume_claim="dr-share"),
    "file-nfs": k8s.RenderOptions(repository="file:///mnt/dr",
                                  nfs="nfs.internal:/exports/prefect-dr"),
}


def objects_of(options: k8s.RenderOptions) -> list[dict[str, Any]]:
    """What k8s render prints, and the pre-upgrade hook Job."""
    return [*everything(options), k8s.pre_upgrade_hook(options)]


def service_accounts(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """role -> the annotations of its ServiceAccount."""
    return {o["metadata"]["labels"]["app.kubernetes.io/component"]: o["metadata"]["annotations"]
            for o in by_kind(objects, "ServiceAccount")}


def templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> pod template of every CronJob and Job (the hook is pre-upgrade-backup)."""
    out = {}
    for obj in objects:
        if obj["kind"] in ("CronJob", "Job"):
            spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
            out[spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"]] = (
                spec["template"])
    return out


def pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> pod spec, the hook's included."""
    return {component: t["spec"] for component, t in templates(objects).items()}


def pod_labels(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """component -> labels of the pod."""
    return {component: t["metadata"]["labels"] for component, t in templates(objects).items()}


def env_of(pod: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in pod["containers"][0].get("env", ())}


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_valid_and_the_configmap_names_the_repository(case: str) -> None:
    options = CASES[case]
    objects = objects_of(options)
    for obj in objects:
        assert_valid(obj)
    [cm] = by_kind(objects, "ConfigMap")
    data = cm["data"]
    settings = config.load(env=data)  # the tool's own validation accepts the ConfigMap
    assert str(settings.repository_url) == str(k8s.options.repository_url(options))
    assert data["PREFECT_DR_REPOSITORY"].split(":")[0] == case.split("-")[0]
    assert "PREFECT_DR_S3_BUCKET" not in data and "PREFECT_DR_S3_PREFIX" not in data
    if not case.startswith("s3"):  # S3 settings only for an s3:// repository
        assert not [k for k in data if k.startswith("PREFECT_DR_S3_")]
    assert not [k for k in data if k.startswith(("AWS_", "AZURE_STORAGE", "GOOGLE_"))]


def test_an_s3_repository_keeps_keys_or_uses_irsa() -> None:
    keys = everything(k8s.RenderOptions(repository="s3://acme-prefect-backups/prod"))
    for role, pod in pods(keys).items():
        assert {"secretRef": {"name": f"prefect-dr-s3-{role}"}} in pod["containers"][0]["envFrom"]
    objects = objects_of(CASES["s3-irsa"])
    for role, account in service_accounts(objects).items():
        assert account["eks.amazonaws.com/role-arn"] == (
            f"arn:aws:iam::123456789012:role/prefect-dr-{role}")
    assert not [s for s in by_kind(objects, "Secret") if "AWS_ACCESS_KEY_ID" in s["stringData"]]
    for pod in pods(objects).values():
        assert not [e for e in pod["containers"][0]["envFrom"] if "secretRef" in e]


def test_azure_jobs_read_their_own_connection_string_secret() -> None:
    objects = objects_of(CASES["azure-secrets"])
    found = pods(objects)
    for role, pod in found.items():
        refs = [e["secretRef"]["name"] for e in pod["containers"][0]["envFrom"]
                if "secretRef" in e]
        assert refs == [f"prefect-dr-azure-{role.removeprefix('pre-upgrade-')}"], role
    examples = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    for role in ROLES:
        data = examples[f"prefect-dr-azure-{role}"]
        assert list(data) == ["AZURE_STORAGE_CONNECTION_STRING"]
        assert k8s.PLACEHOLDER in data["AZURE_STORAGE_CONNECTION_STRING"]
    assert not [a for a in service_accounts(objects).values() if len(a) > 1]
    assert not [labels for labels in pod_labels(objects).values()
                if "azure.workload.identity/use" in labels]


def test_azure_workload_identity_annotates_the_account_and_labels_the_pod() -> None:
    options = CASES["azure-identity"]
    objects = objects_of(options)
    annotations = service_accounts(objects)
    assert annotations["backup"]["azure.workload.identity/client-id"] == CLIENT_ID
    assert "azure.workload.identity/client-id" in annotations["prune"]
    assert "azure.workload.identity/client-id" not in annotations["verify"]
    labels = pod_labels(objects)
    for component in ("backup", "prune", "pre-upgrade-backup"):  # the hook is the backup job
        assert labels[component]["azure.workload.identity/use"] == "true", component
    for component in ("verify", "restore"):
        assert "azure.workload.identity/use" not in labels[component]
    found = pods(objects)
    assert not [e for e in found["backup"]["containers"][0]["envFrom"] if "secretRef" in e]
    assert "prefect-dr-azure-backup" not in {s["metadata"]["name"]
                                             for s in by_kind(objects, "Secret")}
    assert "prefect-dr-azure-verify" in secret_names(found["verify"])  # keeps its Secret
    [cm] = by_kind(objects, "ConfigMap")
    assert cm["data"]["PREFECT_DR_AZURE_ACCOUNT_URL"] == ACCOUNT_URL
    # the account URL may come with the repository URL instead
    everything(k8s.RenderOptions(repository=f"{AZURE}?account_url={ACCOUNT_URL}",
                                 workload_identities={"backup": CLIENT_ID}))
    with pytest.raises(ValueError, match="needs the account URL"):
        everything(k8s.RenderOptions(repository=AZURE, workload_identities={"backup": CLIENT_ID}))


def test_gcs_jobs_mount_their_own_key_file() -> None:
    objects = objects_of(CASES["gs-key"])
    for component, pod in pods(objects).items():
        [container] = pod["containers"]
        role = component.removeprefix("pre-upgrade-")
        assert env_of(pod)["GOOGLE_APPLICATION_CREDENTIALS"] == "/etc/prefect-dr/gcp/key.json"
        [volume] = [v for v in pod["volumes"] if v["name"] == "gcp-key"]
        assert volume["secret"] == {"secretName": f"prefect-dr-gcs-{role}", "defaultMode": 0o440,
                                    "items": [{"key": "key.json", "path": "key.json"}]}
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "gcp-key"]
        assert mount == {"name": "gcp-key", "mountPath": "/etc/prefect-dr/gcp", "readOnly": True}
        assert not [e for e in container["envFrom"] if "secretRef" in e]
    keys = [s["stringData"] for s in by_kind(objects, "Secret") if "key.json" in s["stringData"]]
    assert len(keys) == 4 and all(k8s.PLACEHOLDER in k["key.json"] for k in keys)


def test_gke_workload_identity_annotates_each_account_and_mounts_no_key() -> None:
    objects = objects_of(CASES["gs-identity"])
    for role, account in service_accounts(objects).items():
        assert account["iam.gke.io/gcp-service-account"] == gsa(role)
    for pod in pods(objects).values():
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in env_names(pod)
        assert not [v for v in pod["volumes"] if v["name"] == "gcp-key"]
    assert not [s for s in by_kind(objects, "Secret") if "key.json" in s["stringData"]]


@pytest.mark.parametrize(("case", "source"), [
    ("file-claim", {"persistentVolumeClaim": {"claimName": "dr-share"}}),
    ("file-nfs", {"persistentVolumeClaim": {"claimName": "prefect-dr-repository"}}),
])
def test_a_file_repository_is_a_volume_mounted_at_its_path_in_every_job(
        case: str, source: dict[str, Any]) -> None:
    options = CASES[case]
    path = k8s.options.repository_url(options).path
    objects = objects_of(options)
    found = pods(objects)
    assert set(found) == {*ROLES, "pre-upgrade-backup"}
    for pod in found.values():
        [volume] = [v for v in pod["volumes"] if v["name"] == "repository"]
        assert volume == {"name": "repository", **source}
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "repository"]
        assert mount == {"name": "repository", "mountPath": path}  # read-write: all jobs write
    # no credentials of any cloud: only the age identity and the signing key are Secrets
    assert [s["metadata"]["name"] for s in by_kind(objects, "Secret")] == [
        options.identity_secret, options.signing_key_secret]
    if case == "file-nfs":  # Pod Security "restricted" admits no nfs volume: a PV + claim
        [pv] = by_kind(objects, "PersistentVolume")
        [pvc] = by_kind(objects, "PersistentVolumeClaim")
        assert pv["spec"]["nfs"] == {"server": "nfs.internal", "path": "/exports/prefect-dr"}
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pv["spec"]["claimRef"]["name"] == pvc["metadata"]["name"]
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    default = everything(k8s.RenderOptions(repository="file:///backups"))
    [volume] = [v for v in pods(default)["backup"]["volumes"] if v["name"] == "repository"]
    assert volume["persistentVolumeClaim"]["claimName"] == k8s.DEFAULT_VOLUME_CLAIM


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"repository": "ftp://host/x"}, "must start with"),
    ({"repository": AZURE, "workload_identities": {"backup": "arn:aws:iam::1:role/x"},
      "azure_account_url": ACCOUNT_URL}, "client id"),
    ({"repository": GS, "workload_identities": {"backup": CLIENT_ID}}, "service account"),
    ({"workload_identities": {"backup": gsa("backup")}}, "IAM role ARN"),
    ({"repository": GS, "workload_identities": {"backups": gsa("backup")}}, "unknown role"),
    ({"repository": "file:///backups", "workload_identities": {"backup": CLIENT_ID}},
     "file://"),
    ({"repository": "file:///backups", "credential_secrets": {"backup": "x"}}, "file://"),
    ({"repository": "file:///tmp/backups"}, "collides"),
    ({"repository": "file:///etc"}, "collides"),
    ({"repository": "file:///backups", "nfs": "nfs.internal"}, "SERVER:/EXPORT"),
    ({"repository": "file:///backups", "nfs": "nfs:/x", "volume_claim": "c"}, "not both"),
    ({"repository": "file:///backups", "volume_claim": "Bad_Claim"}, "volume claim"),
    ({"volume_claim": "dr-share"}, "file://"),
    ({"repository": AZURE, "azure_account_url": "acme.blob"}, "azure_account_url"),
    ({"repository": AZURE, "azure_account_url": f"{ACCOUNT_URL}?sv=2024&sig=abc"}, "SAS"),
    ({"repository": f"{AZURE}?account_url={ACCOUNT_URL}%3Fsig%3Dabc"}, "SAS"),
    ({"repository": GS, "credential_secrets": {"backup": "Bad_Name"}}, "secret name"),
    ({"extra_env": {"AZURE_STORAGE_CONNECTION_STRING": "x"}}, "secret"),
    ({"extra_env": {"AZURE_STORAGE_KEY": "x"}}, "secret"),
    ({"extra_env": {"PREFECT_DR_REPOSITORY": "file:///x"}}, "own option"),
])
def test_bad_repository_options_raise_value_error(changes: dict[str, Any],
                                                  fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        everything(k8s.RenderOptions(**changes))
    assert "\n" not in str(info.value)


def test_options_from_settings_take_the_repository() -> None:
    settings = config.load(env={"PREFECT_DR_REPOSITORY": f"{AZURE}?account_url={ACCOUNT_URL}"})
    options = k8s.options_from_settings(settings, workload_identities={"backup": CLIENT_ID})
    [cm] = by_kind(everything(options), "ConfigMap")
    assert config.load(env=cm["data"]).repository_url == settings.repository_url
    # an s3:// URL is rendered as the URL, not as the example bucket
    settings = config.load(env={"PREFECT_DR_REPOSITORY": "s3://acme-dr/prod"})
    [cm] = by_kind(everything(k8s.options_from_settings(settings)), "ConfigMap")
    assert cm["data"]["PREFECT_DR_REPOSITORY"] == "s3://acme-dr/prod"
    assert "PREFECT_DR_S3_BUCKET" not in cm["data"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_", "AZURE_", "GOOGLE_"))}
    return {**env, **extra}


SECRET = "Zm9vYmFyU2VjcmV0S2V5PT0="  # a made-up account key


@pytest.mark.parametrize(("repository", "flags", "expected"), [
    (f"{AZURE}?account_url={ACCOUNT_URL}", ["--workload-identity", f"backup={CLIENT_ID}"],
     f"azure.workload.identity/client-id: {CLIENT_ID}"),
    (GS, ["--workload-identity", f"verify={gsa('verify')}"],
     f"iam.gke.io/gcp-service-account: {gsa('verify')}"),
    ("file:///backups", ["--volume-claim", "dr-share"], "claimName: dr-share"),
    ("file:///backups", ["--nfs", "10.0.0.5:/exports/dr"], "server: 10.0.0.5"),
])
def test_cli_renders_each_backend_and_never_the_credentials_it_runs_with(
        tmp_path: Path, repository: str, flags: list[str], expected: str) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text('{"type": "service_account", "private_key": "' + SECRET + '"}')
    env = _clean_env(
        PREFECT_DR_REPOSITORY=repository, PREFECT_DR_AGE_RECIPIENTS=RECIPIENT,
        AZURE_STORAGE_CONNECTION_STRING=(
            f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={SECRET}"),
        AZURE_STORAGE_KEY=SECRET, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", "k8s", "render", *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    for value in (SECRET, "AKIAEXAMPLE", str(key_file)):
        assert value not in proc.stdout and value not in proc.stderr
    for obj in yaml.safe_load_all(proc.stdout):
        assert_valid(obj)


def test_cli_refuses_a_bad_combination_with_one_line() -> None:
    env = _clean_env(PREFECT_DR_REPOSITORY="s3://acme-dr/prod")
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", "k8s", "render",
                           "--volume-claim", "dr-share"], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert "volume_claim and nfs mount a file:// repository" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", "k8s", "render",
                           "--workload-identity", "backup"], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert "JOB=IDENTITY" in proc.stderr or "KEY=VALUE" in proc.stderr
