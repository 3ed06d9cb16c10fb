from __future__ import annotations

from pathlib import Path

import pytest

from prefect_dr import config, crypto
from prefect_dr.errors import ConfigError

RECIPIENT = crypto.generate_identity()[1]


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text('[s3]\nbucket = "from-file"\nprefix = "file-prefix"\nregion = "eu-west-1"\n')
    env = {"PREFECT_DR_S3_PREFIX": "env-prefix", "PREFECT_DR_S3_REGION": "us-east-2"}
    flags = {"s3_region": ("ap-south-1", "--region")}
    s = config.load(config_file=cfg, env=env, flags=flags)
    assert s.s3_bucket == "from-file" and s.sources["s3_bucket"] == f"file {cfg}"
    assert s.s3_prefix == "env-prefix" and s.sources["s3_prefix"] == "env PREFECT_DR_S3_PREFIX"
    assert s.s3_region == "ap-south-1" and s.sources["s3_region"] == "flag --region"
    s2 = config.load(env={})
    assert s2.s3_prefix == "prefect-dr" and s2.sources["s3_prefix"] == "default"


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text('[s3]\nbucket = "abc"\n')
    s = config.load(env={"PREFECT_DR_CONFIG": str(cfg)})
    assert s.s3_bucket == "abc"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text('[s3]\nbucket = "UPPER_case"\nbuckit = "typo"\n[age]\nrecipients = ["nope"]\n')
    env = {"PREFECT_DR_DATABASE_URL": "mysql://x@y/z",
           "PREFECT_DR_SIGNING_KEY_FILE": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError) as info:
        config.load(config_file=cfg, env=env)
    problems = info.value.problems
    assert len(problems) == 5, problems
    joined = " | ".join(problems)
    for needle in ("unknown setting 's3.buckit'", "not a valid bucket name", "postgresql://",
                   "not an age recipient", "missing.pem does not exist"):
        assert needle in joined
    assert "\n" not in info.value.message


def test_malformed_toml_is_one_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text("[s3\nbucket=")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        config.load(config_file=cfg, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(config_file=tmp_path / "nope.toml", env={})


def test_password_in_a_flag_is_refused() -> None:
    flags = {"database_url": ("postgresql://u:hunter2hunter2@h/db", "--database-url")}
    with pytest.raises(ConfigError) as info:
        config.load(env={}, flags=flags)
    assert "must not carry a password" in info.value.message
    assert "hunter2hunter2" not in info.value.message


def test_display_redacts_url_password() -> None:
    env = {"PREFECT_DR_DATABASE_URL": "postgresql://prefect:Sup3rSecretPw@db:5432/prefect"}
    s = config.load(env=env)
    shown = {r["name"]: r["value"] for r in s.display()}
    assert shown["database_url"] == "postgresql://prefect:***@db:5432/prefect"
    assert "Sup3rSecretPw" not in repr(s.display())


def test_recipients_from_env_and_file(tmp_path: Path) -> None:
    other = crypto.generate_identity()[1]
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# team key\n{other}\n\n")
    s = config.load(env={"PREFECT_DR_AGE_RECIPIENTS": f" {RECIPIENT} ,",
                         "PREFECT_DR_AGE_RECIPIENTS_FILE": str(rfile)})
    assert s.recipients == [RECIPIENT, other]


def test_require_lists_every_missing_setting() -> None:
    s = config.load(env={})
    with pytest.raises(ConfigError) as info:
        s.require("database_url", "s3_bucket", "recipients")
    assert len(info.value.problems) == 3
    assert "PREFECT_DR_DATABASE_URL" in info.value.message


def test_unknown_env_variable_is_a_warning_not_an_error() -> None:
    s = config.load(env={"PREFECT_DR_S3_BUCKT": "x", "PREFECT_DR_STACK_DIR": "/tmp"})
    assert s.warnings == ("unknown environment variable PREFECT_DR_S3_BUCKT ignored",)


@pytest.mark.parametrize("env, needle", [
    ({"PREFECT_DR_S3_ENDPOINT_URL": "http://[127.0.0.1:9000"},
     "PREFECT_DR_S3_ENDPOINT_URL is not a valid URL"),
    ({"PREFECT_DR_DATABASE_URL": "postgresql://u:Sekr1t@[::1/prefect"},
     "PREFECT_DR_DATABASE_URL is not a valid URL"),
    ({"PREFECT_DR_DATABASE_URL": "postgresql://u:Sekr1t@h:port/prefect"},
     "PREFECT_DR_DATABASE_URL is not a valid URL"),
    ({"PREFECT_DR_S3_PREFIX": "chaos-\udcff"}, "PREFECT_DR_S3_PREFIX: not valid UTF-8"),
    ({"PREFECT_DR_ZSTD_LEVEL": "3.5"}, "expected a whole number"),
])
def test_malformed_values_are_config_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env=env)
    assert needle in info.value.message
    assert "Sekr1t" not in info.value.message


@pytest.mark.parametrize("value", ["inf", "nan", "3.5", "true", '"x"'])
def test_non_integer_toml_values_are_config_errors(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text(f"[backup]\nzstd_level = {value}\n")
    with pytest.raises(ConfigError, match=r"backup\.zstd_level: expected a whole number"):
        config.load(config_file=cfg, env={})
    cfg.write_text("[backup]\nzstd_level = 4.0\n")
    assert config.load(config_file=cfg, env={}).zstd_level == 4


def test_malformed_url_in_a_flag_is_a_config_error_named_by_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--database-url is not a valid URL"):
        config.load(env={}, flags={"database_url": ("postgresql://x@[h/db", "--database-url")})


def test_problems_name_the_file_key_flag_or_variable_that_set_the_value(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text('[s3]\nbucket = "No_Such"\n[database]\nurl = "mysql://h/db"\n'
                   '[backup]\nzstd_level = 40\n')
    env = {"PREFECT_DR_S3_PREFIX": "/lead"}
    flags = {"database_url": ("http://h/db", "--database-url")}
    with pytest.raises(ConfigError) as info:
        config.load(config_file=cfg, env=env, flags=flags)
    assert sorted(info.value.problems) == sorted([
        f"{cfg}: s3.bucket 'No_Such' is not a valid bucket name (3-63 lowercase letters, "
        "digits, dots, hyphens)",
        "--database-url must start with postgresql://",
        f"{cfg}: backup.zstd_level must be between 1 and 19",
        "PREFECT_DR_S3_PREFIX must not start or end with '/' nor contain '//'"])


def test_a_missing_identity_file_is_a_key_error_where_it_is_used(tmp_path: Path) -> None:
    """The backup job never needs the identity: its absence is no configuration error (exit 2)
    but a key error (exit 12) for the commands that read it."""
    from prefect_dr import crypto
    from prefect_dr.errors import KEY_ERROR, CryptoKeyError

    missing = tmp_path / "missing.txt"
    settings = config.load(env={"PREFECT_DR_AGE_IDENTITY_FILE": str(missing)})
    assert settings.age_identity_file == str(missing)
    with pytest.raises(CryptoKeyError) as info:
        crypto.load_identities(missing)
    assert info.value.exit_code == KEY_ERROR and "does not exist" in info.value.message


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("no", False),
                                               ("FALSE", False)])
def test_boolean_settings(raw: str, expected: bool) -> None:
    settings = config.load(env={"PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS": raw})
    assert settings.allow_undecryptable_blocks is expected


def test_a_malformed_boolean_is_a_problem() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={"PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS": "maybe"})
    assert "expected true or false" in info.value.message
