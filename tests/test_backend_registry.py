"""A new backend is one module and one registry line: a toy backend (tests/toy_backend.py),
registered here, gets URL parsing, settings, the factory, doctor and the whole storage
contract suite without any other change."""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import test_storage_contract as contract
import toy_backend
from conftest import clean

from prefect_dr import config, doctor, k8s
from prefect_dr.errors import ConfigError
from prefect_dr.k8s import options as k8s_options
from prefect_dr.storage import factory, registry
from prefect_dr.storage import url as repo_url
from prefect_dr.storage.base import Storage

TOY = registry.Backend("toy", "toy_backend", "toy://BOX/PREFIX",
                       re.compile(r"^[a-z][a-z0-9]{2,20}$"), "box", {"zone": "text"},
                       kubernetes=registry.Kubernetes(
                           settings=(("PREFECT_DR_TOY_REGION", "region"),),
                           secret_env=("TOY_TOKEN",), secret_env_prefixes=("TOY_SECRET_",),
                           identity_annotation="toy.example/identity",
                           identity=re.compile(r"^toy-id-[0-9]+$"), identity_word="a toy id",
                           identity_pod_labels={"toy.example/use": "yes"},
                           secret_prefix="prefect-dr-toy",
                           secret_data={"TOY_TOKEN": "{placeholder}", "TOY_ZONE": "west"},
                           secret_description="toy token of the {role} job only"))


@pytest.fixture(autouse=True)
def toy_registered() -> Iterator[None]:
    registry.register(TOY)
    toy_backend.BOXES.clear()
    yield
    registry.unregister("toy")


def test_urls_of_the_new_scheme_parse_and_are_checked() -> None:
    url = repo_url.parse("toy://box1/prod/eu?zone=west")
    assert (url.scheme, url.container, url.prefix, url.params) == (
        "toy", "box1", "prod/eu", {"zone": "west"})
    assert str(url) == "toy://box1/prod/eu?zone=west"
    with pytest.raises(repo_url.RepositoryURLError, match=r"'B!' is not a valid box name"):
        repo_url.parse("toy://B!/p")
    with pytest.raises(repo_url.RepositoryURLError, match=r"unknown parameter endpoint "
                                                          r"\(allowed: zone\)"):
        repo_url.parse("toy://box1/p?endpoint=http://x")
    with pytest.raises(repo_url.RepositoryURLError, match=r"or toy://$"):
        repo_url.parse("ftp://box1/p")


def test_settings_and_the_factory_open_it() -> None:
    settings = config.load(env={"PREFECT_DR_REPOSITORY": "toy://box1/prod?zone=west"})
    assert settings.repository_url.scheme == "toy" and settings.layout_prefix == "prod"
    store = factory.from_settings(settings)
    assert isinstance(store, toy_backend.ToyStorage) and store.zone == "west"
    assert store.url == "toy://box1/prod?zone=west"
    with pytest.raises(ConfigError, match="toy://"):
        config.load(env={"PREFECT_DR_REPOSITORY": "toy://B!/prod"})


def test_doctor_checks_it_through_the_interface() -> None:
    settings = config.load(env={"PREFECT_DR_REPOSITORY": "toy://box1/prod?zone=west"})
    report = doctor.Report()
    doctor.check_storage(report, settings, None, uuid.uuid4().hex[:8])
    got = {c.name: (c.status, c.detail) for c in report.checks}
    assert got["repository"] == (doctor.OK, "toy://box1 in zone west is reachable")
    assert got["repository probe"][0] == doctor.OK
    assert got["toy zone"] == (doctor.OK, "west")


def test_an_unregistered_scheme_is_refused() -> None:
    registry.unregister("toy")
    with pytest.raises(repo_url.RepositoryURLError, match="must start with s3://"):
        repo_url.parse("toy://box1/p")


def _objects(options: k8s.RenderOptions, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s.render(options) if o["kind"] == kind}


def test_k8s_render_takes_its_credential_secret_and_identity_from_the_descriptor() -> None:
    options = k8s.RenderOptions(repository="toy://box1/prod?zone=west",
                                workload_identities={"prune": "toy-id-7"})
    templates = {s["metadata"]["name"]: s for s in k8s.secret_templates(options)
                 if "toy" in s["metadata"]["name"]}
    assert sorted(templates) == [f"prefect-dr-toy-{r}" for r in ("backup", "restore", "verify")]
    backup = templates["prefect-dr-toy-backup"]
    assert backup["stringData"] == {"TOY_TOKEN": k8s.PLACEHOLDER, "TOY_ZONE": "west"}
    assert backup["metadata"]["annotations"]["prefect-dr/description"] == (
        "toy token of the backup job only")
    pods = {name: job["spec"]["jobTemplate"]["spec"]["template"]
            for name, job in _objects(options, "CronJob").items()}
    backup_pod, prune_pod = pods["prefect-dr-backup"], pods["prefect-dr-prune"]
    assert {"secretRef": {"name": "prefect-dr-toy-backup"}} in (
        backup_pod["spec"]["containers"][0]["envFrom"])
    assert "toy.example/use" not in backup_pod["metadata"]["labels"]
    assert not any("secretRef" in e and "toy" in e["secretRef"]["name"]
                   for e in prune_pod["spec"]["containers"][0].get("envFrom", []))
    assert prune_pod["metadata"]["labels"]["toy.example/use"] == "yes"
    accounts = _objects(options, "ServiceAccount")
    assert accounts["prefect-dr-prune"]["metadata"]["annotations"]["toy.example/identity"] == (
        "toy-id-7")
    assert "toy.example/identity" not in accounts["prefect-dr-backup"]["metadata"]["annotations"]
    assert k8s.config_env(options)["PREFECT_DR_REPOSITORY"] == "toy://box1/prod?zone=west"
    assert k8s.config_env(options)["PREFECT_DR_TOY_REGION"] == "us-east-1"
    with pytest.raises(ValueError, match="is not a toy id, as a toy:// repository needs"):
        k8s.render(k8s.RenderOptions(repository="toy://box1/prod",
                                     workload_identities={"prune": "arn:x"}))


# What k8s/options.py listed by hand before the registry did (issue 24): the real backends'
# descriptors must give exactly these, so the derivation lost and added nothing.
_MANAGED_BEFORE = frozenset({
    "PREFECT_DR_DATABASE_URL", "PREFECT_DR_S3_BUCKET", "PREFECT_DR_S3_PREFIX",
    "PREFECT_DR_S3_ENDPOINT_URL", "PREFECT_DR_S3_REGION", "PREFECT_DR_AGE_RECIPIENTS",
    "PREFECT_API_URL", "PREFECT_DR_RETENTION_FULL", "PREFECT_DR_RETENTION_CONFIG_ONLY",
    "PREFECT_DR_VERIFY_KEY", "PREFECT_DR_AGE_IDENTITY_FILE", "PREFECT_DR_SIGNING_KEY_FILE",
    "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE", "PREFECT_DR_BACKUP_CRON", "PREFECT_DR_VERIFY_CRON",
    "PREFECT_DR_PUSHGATEWAY_URL", "PREFECT_DR_METRICS_INSTANCE", "PREFECT_DR_NOTIFY_ON",
    "PREFECT_DR_REPOSITORY", "PREFECT_DR_AZURE_ACCOUNT_URL", "GOOGLE_APPLICATION_CREDENTIALS",
    "PREFECT_DR_STAGING_DIR", "PREFECT_DR_STAGING_LIMIT",
})
_SECRET_BEFORE = frozenset({
    "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_SERVER_ENCRYPTION_KEY",
    "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_PASSWORD",
    "PREFECT_SERVER_DATABASE_PASSWORD", "PREFECT_DR_NOTIFY", "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_KEY", "AZURE_CLIENT_SECRET",
})


def test_k8s_env_lists_of_the_real_backends_are_the_ones_written_by_hand_before() -> None:
    registry.unregister("toy")
    assert k8s_options.managed_env() == _MANAGED_BEFORE
    assert k8s_options.secret_env() == (_SECRET_BEFORE, ("AWS_",))
    assert k8s_options.is_secret_env("AWS_ACCESS_KEY_ID")
    assert not k8s_options.is_secret_env("PREFECT_DR_ZSTD_LEVEL")


@pytest.mark.parametrize(("name", "fragment"), [
    ("TOY_TOKEN", "is a secret"),
    ("TOY_SECRET_KEY", "is a secret"),
    ("PREFECT_DR_TOY_REGION", "is set by its own option"),
])
def test_k8s_extra_env_refuses_the_new_backends_variables(name: str, fragment: str) -> None:
    options = k8s.RenderOptions(extra_env={name: "x"})
    with pytest.raises(ValueError, match=f"extra_env: {name} {fragment}"):
        k8s.render(options)
    registry.unregister("toy")
    assert any(o["kind"] == "ConfigMap" for o in k8s.render(options))


# The whole contract suite, on the toy backend: every test of tests/test_storage_contract.py
# that takes a store runs here again with this module's ``store``.
@pytest.fixture
def store() -> Iterator[tuple[Storage, str]]:
    backend = registry.get("toy")
    assert backend is not None
    prefix = f"contract-{uuid.uuid4().hex[:8]}/"
    built = backend.build(repo_url.parse("toy://box1/"), None, 1.0)
    yield built, prefix
    clean(built, prefix)


for _name, _test in inspect.getmembers(contract, inspect.isfunction):
    if _name.startswith("test_") and "store" in inspect.signature(_test).parameters:
        globals()[f"{_name}_on_toy"] = _test
