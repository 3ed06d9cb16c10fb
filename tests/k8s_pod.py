"""Run rendered Kubernetes objects the way the kubelet would, without a cluster.

:class:`Namespace` models the objects of one namespace: ``kubectl create secret generic``
(:meth:`Namespace.create_secret`), ``kubectl apply -f`` (:meth:`Namespace.apply`: it replaces
the objects the file holds, keeps every other one, and refuses ``generateName`` as kubectl
does) and ``kubectl create -f`` (:meth:`Namespace.create`: refuses an existing name).

:func:`run_job` runs the pod of a Job or of a CronJob's job template: its environment is built
from the ConfigMaps and Secrets of the namespace (``envFrom`` first, then ``env``; a missing
Secret or key is ``CreateContainerConfigError``, as on a node), its volumes are mounted (an
``emptyDir`` is a tmpfs of its ``sizeLimit``, a Secret volume a read-only folder of its items,
a claim or an ephemeral volume a folder of the test's), the root file system is read-only and
the process runs as the pod's non-root uid and gid (bubblewrap, ``bwrap``, in a user
namespace; the network is the host's, so the pod reaches the loopback stack). The image is
this checkout: ``python -m prefect_dr`` with the container's ``args``. The exit code is judged
by the Job's ``podFailurePolicy`` and ``backoffLimit``: a ``FailJob`` code ends the Job at
once, any other failure is retried until the limit.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTOR = {None: 1, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
           "k": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}
#: What the image sets (Dockerfile ENV); PATH is this machine's (its PostgreSQL clients).
IMAGE_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
             "PYTHONUNBUFFERED": "1"}


class ApplyError(Exception):
    """What kubectl would refuse."""


def quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity (1Gi, 512Mi, 1000)."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"unsupported quantity {text!r}")
    return int(match[1]) * _FACTOR[match[2]]


@dataclass
class Namespace:
    """The objects of one namespace, as the API server would hold them."""

    name: str
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def create_secret(self, name: str, data: Mapping[str, str]) -> None:
        """``kubectl create secret generic NAME --from-literal=KEY=VALUE...``."""
        self.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": name, "namespace": self.name},
                     "stringData": dict(data)})

    def replace_secret(self, name: str, data: Mapping[str, str]) -> None:
        """``kubectl create secret generic ... --dry-run=client -o yaml | kubectl replace``."""
        self.objects[("Secret", name)]["stringData"] = dict(data)

    def create(self, obj: Mapping[str, Any]) -> None:
        """``kubectl create -f``: a new object; an existing name is AlreadyExists."""
        meta = obj["metadata"]
        if "name" not in meta:
            raise ApplyError("a generateName object gets a name from the server; this model "
                             "creates named objects only")
        key = (obj["kind"], meta["name"])
        if key in self.objects:
            raise ApplyError(f'{obj["kind"]} "{meta["name"]}" already exists')
        self.objects[key] = copy.deepcopy(dict(obj))

    def apply(self, documents: list[dict[str, Any]]) -> None:
        """``kubectl apply -f``: every object of the file replaces the one of its name, every
        other object stays; an object with generateName (or no name) is refused, before any
        is applied, as kubectl does."""
        for obj in documents:
            meta = obj.get("metadata", {})
            if "generateName" in meta or not meta.get("name"):
                raise ApplyError(f"error: from {meta.get('generateName', '?')}: cannot use "
                                 "generate name with apply")
        for obj in documents:
            self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None."""
        return self.objects.get((kind, name))

    def secret_value(self, name: str, key: str) -> str | None:
        """A Secret's value (stringData as the API server would store it), or None."""
        secret = self.get("Secret", name)
        if secret is None:
            return None
        return secret.get("stringData", {}).get(key)


@dataclass
class PodRun:
    """One pod's run."""

    exit_code: int | None  # None: the container never started
    reason: str  # Completed, Error, CreateContainerConfigError
    stdout: str
    stderr: str


@dataclass
class JobRun:
    """A Job's run: its pods and how the Job ended (Complete or Failed) and why."""

    pods: list[PodRun]
    status: str  # Complete, Failed, Pending (a pod that cannot start stays pending)
    reason: str  # PodFailurePolicy, BackoffLimitExceeded, ""

    @property
    def last(self) -> PodRun:
        """The last pod's run."""
        return self.pods[-1]


def job_spec_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The Job spec of a Job, or of a CronJob's job template."""
    if obj["kind"] == "CronJob":
        return copy.deepcopy(obj["spec"]["jobTemplate"]["spec"])
    if obj["kind"] == "Job":
        return copy.deepcopy(obj["spec"])
    raise ValueError(f"not a Job or CronJob: {obj['kind']}")


def judge(spec: Mapping[str, Any], container: str, exit_code: int) -> str:
    """What the Job controller does with a pod that exited ``exit_code``: ``Complete``,
    ``FailJob`` (a podFailurePolicy rule) or ``Retry`` (counts against backoffLimit)."""
    if exit_code == 0:
        return "Complete"
    for rule in spec.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", container) != container:
            continue
        matched = exit_code in codes["values"]
        if codes["operator"] == "NotIn":
            matched = not matched
        if matched:
            return {"FailJob": "FailJob", "Ignore": "Ignore", "Count": "Retry"}[rule["action"]]
    return "Retry"


class ContainerConfigError(Exception):
    """A Secret or ConfigMap (or a key of one) the container needs does not exist."""


def _environment(ns: Namespace, container: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            obj = ns.get("ConfigMap", ref)
            if obj is None:
                raise ContainerConfigError(f'configmap "{ref}" not found')
            env.update(obj.get("data", {}))
        else:
            ref = source["secretRef"]["name"]
            obj = ns.get("Secret", ref)
            if obj is None:
                raise ContainerConfigError(f'secret "{ref}" not found')
            env.update(obj.get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        value = ns.secret_value(ref["name"], ref["key"])
        if value is None:
            raise ContainerConfigError(f'couldn\'t find key {ref["key"]} in Secret '
                                       f'{ns.name}/{ref["name"]}')
        env[item["name"]] = value
    return env


def _root_binds() -> list[str]:
    """A read-only root: every top-level folder of this machine but /root, /tmp and the
    kernel's; the interpreter's own prefix when it lives in /root (pyenv)."""
    args: list[str] = []
    for entry in sorted(os.listdir("/")):
        path = f"/{entry}"
        if entry in ("proc", "dev", "tmp", "root", "lost+found") or not os.path.isdir(path):
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif entry == "etc":  # a folder of binds: the pods' /etc/prefect-dr mounts go inside
            args += ["--dir", "/etc"]
            for name in sorted(os.listdir("/etc")):
                if os.path.exists(f"/etc/{name}"):
                    args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        else:
            args += ["--ro-bind", path, path]
    prefix = os.path.realpath(sys.base_prefix)
    if prefix.startswith("/root/"):
        args += ["--ro-bind", prefix, prefix]
    return args


def _software_binds() -> list[str]:
    """What stands for the image's installed software, read-only, when it lies in a folder
    the pod hides (/tmp is the pod's emptyDir, /root is not bound): the checkout the tool is
    installed from (editable) and the virtualenv running it. A clean clone under /tmp (as CI
    may make) failed with "execvp .venv/bin/python: No such file or directory"."""
    import prefect_dr

    args: list[str] = []
    seen: list[str] = []
    for path in (os.path.dirname(os.path.dirname(os.path.realpath(prefect_dr.__file__))),
                 os.path.realpath(sys.prefix)):
        hidden = path.startswith(("/tmp/", "/root/"))
        if hidden and not any(path == s or path.startswith(s + "/") for s in seen):
            args += ["--ro-bind", path, path]
            seen.append(path)
    return args


def _volumes(ns: Namespace, pod: Mapping[str, Any], container: Mapping[str, Any],
             workdir: Path, claims: Mapping[str, Path], size_limits: Mapping[str, str]
             ) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume, target = volumes[mount["name"]], mount["mountPath"]
        if "emptyDir" in volume:
            limit = size_limits.get(volume["name"], volume["emptyDir"].get("sizeLimit"))
            args += (["--size", str(quantity(limit))] if limit else []) + ["--tmpfs", target]
        elif "secret" in volume:
            source = volume["secret"]
            secret = ns.get("Secret", source["secretName"])
            if secret is None:
                raise ContainerConfigError(f'secret "{source["secretName"]}" not found')
            folder = workdir / f"secret-{volume['name']}"
            folder.mkdir(mode=0o750)
            data = secret.get("stringData", {})
            for item in source.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    raise ContainerConfigError(f'couldn\'t find key {item["key"]} in Secret')
                path = folder / item["path"]
                path.write_text(data[item["key"]], encoding="utf-8")
                path.chmod(source.get("defaultMode", 0o644))
            args += ["--ro-bind", str(folder), target]
        elif "persistentVolumeClaim" in volume or "ephemeral" in volume:
            folder = claims[volume["name"]]
            args += ["--ro-bind" if mount.get("readOnly") else "--bind", str(folder), target]
        else:
            raise ValueError(f"volume type of {volume['name']} is not modelled")
    return args


def run_pod(ns: Namespace, spec: Mapping[str, Any], workdir: Path, *,
            image_env: Mapping[str, str] | None = None, claims: Mapping[str, Path] | None = None,
            size_limits: Mapping[str, str] | None = None, timeout: float = 600) -> PodRun:
    """Run the pod of Job spec ``spec`` once (see the module's docstring)."""
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    try:
        env = {"PATH": os.environ["PATH"], **IMAGE_ENV, **(image_env or {}),
               "HOSTNAME": f"{container['name']}-pod"}
        env.update(_environment(ns, container))
        workdir.mkdir(parents=True, exist_ok=True)
        mounts = _volumes(ns, pod, container, workdir, claims or {}, size_limits or {})
    except ContainerConfigError as exc:
        return PodRun(None, "CreateContainerConfigError", "", str(exc))
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security.get("runAsUser"), security.get("runAsGroup")
    assert security.get("runAsNonRoot") and uid and uid != 0, "the pod must not run as root"
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap (bwrap) is not installed: scripts/bootstrap installs it"
    argv = [bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(gid), "--unshare-pid",
            "--die-with-parent", *_root_binds(), "--proc", "/proc", "--dev", "/dev", *mounts,
            *_software_binds()]
    if security.get("readOnlyRootFilesystem"):
        argv += ["--remount-ro", "/"]
    argv += ["--chdir", "/tmp", "--", sys.executable, "-m", "prefect_dr",
             *container.get("args", [])]
    # the container's log, as files a test may follow while the pod runs (workdir/stderr)
    with (workdir / "stdout").open("w") as out, (workdir / "stderr").open("w") as err:
        proc = subprocess.run(argv, env=env, stdout=out, stderr=err, timeout=timeout,
                              check=False)
    return PodRun(proc.returncode, "Completed" if proc.returncode == 0 else "Error",
                  (workdir / "stdout").read_text(), (workdir / "stderr").read_text())


def run_job(ns: Namespace, obj: Mapping[str, Any], workdir: Path, **kwargs: Any) -> JobRun:
    """Run a Job's (or a CronJob's job template's) pods until the Job completes or fails: a
    podFailurePolicy FailJob code fails it at once, other failures are retried up to
    backoffLimit."""
    spec = job_spec_of(obj)
    container = spec["template"]["spec"]["containers"][0]["name"]
    pods: list[PodRun] = []
    failures = 0
    while True:
        run = run_pod(ns, spec, workdir / f"pod-{len(pods)}", **kwargs)
        pods.append(run)
        if run.exit_code is None:
            return JobRun(pods, "Pending", run.reason)
        verdict = judge(spec, container, run.exit_code)
        if verdict == "Complete":
            return JobRun(pods, "Complete", "")
        if verdict == "FailJob":
            return JobRun(pods, "Failed", "PodFailurePolicy")
        if verdict == "Retry":
            failures += 1
        if failures > spec.get("backoffLimit", 6):
            return JobRun(pods, "Failed", "BackoffLimitExceeded")
