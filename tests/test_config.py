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


def test_azure_account_url_with_a_sas_token_is_refused_without_echoing_it() -> None:
    env = {"PREFECT_DR_AZURE_ACCOUNT_URL":
           "https://acct.blob.core.windows.net/?sv=2024&sig=S3cr3tSasSignature"}
    with pytest.raises(ConfigError) as info:
        config.load(env=env)
    assert "must not carry credentials" in info.value.message
    assert "S3cr3tSasSignature" not in info.value.message


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


# ---- the database from Prefect's own settings ---------------------------------------------

ASYNC_URL = "postgresql+asyncpg://prefect:Pw-7c1e9a@db.internal:5433/prefect"


def test_prefect_connection_url_is_the_fallback_as_a_libpq_url() -> None:
    s = config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL": ASYNC_URL})
    assert s.database_url == "postgresql://prefect:Pw-7c1e9a@db.internal:5433/prefect"
    assert s.sources["database_url"] == "env PREFECT_API_DATABASE_CONNECTION_URL"
    [row] = [r for r in s.display() if r["name"] == "database_url"]
    assert row["value"] == "postgresql://prefect:***@db.internal:5433/prefect"
    assert row["source"] == "env PREFECT_API_DATABASE_CONNECTION_URL"
    assert s.warnings == ()


def test_prefect_settings_precedence() -> None:
    """Ours first (flag > env > file); then Prefect's SERVER name, its API alias, components."""
    prefect = {"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://a@api/db",
               "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://a@server/db",
               "PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
               "PREFECT_SERVER_DATABASE_HOST": "components", "PREFECT_SERVER_DATABASE_USER": "a",
               "PREFECT_SERVER_DATABASE_NAME": "db"}
    own = {"PREFECT_DR_DATABASE_URL": "postgresql://dr@own/db"}
    assert config.load(env={**prefect, **own}).database_url == "postgresql://dr@own/db"
    flag = {"database_url": ("postgresql://dr@flag/db", "--database-url")}
    assert config.load(env=prefect, flags=flag).database_url == "postgresql://dr@flag/db"
    s = config.load(env=prefect)
    assert s.database_url == "postgresql://a@server/db"
    assert s.sources["database_url"] == "env PREFECT_SERVER_DATABASE_CONNECTION_URL"
    del prefect["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert config.load(env=prefect).database_url == "postgresql://a@api/db"
    del prefect["PREFECT_API_DATABASE_CONNECTION_URL"]
    s = config.load(env=prefect)
    assert s.database_url == "postgresql://a@components:5432/db"  # Prefect's default port
    assert s.sources["database_url"] == (
        "env PREFECT_SERVER_DATABASE_DRIVER, PREFECT_SERVER_DATABASE_HOST, "
        "PREFECT_SERVER_DATABASE_USER, PREFECT_SERVER_DATABASE_NAME")


def test_prefect_components_with_an_awkward_password() -> None:
    env = {"PREFECT_API_DATABASE_DRIVER": "postgresql+asyncpg",
           "PREFECT_SERVER_DATABASE_HOST": "db", "PREFECT_SERVER_DATABASE_PORT": "6543",
           "PREFECT_API_DATABASE_USER": "pre fect", "PREFECT_SERVER_DATABASE_NAME": "prefect",
           "PREFECT_SERVER_DATABASE_PASSWORD": "p@ss/w:rd%"}
    s = config.load(env=env)
    assert s.database_url == "postgresql://pre%20fect:p%40ss%2Fw%3Ard%25@db:6543/prefect"
    from prefect_dr.pg import dump

    clean, child = dump.child_env(s.database_url, {})
    assert clean == "postgresql://pre%20fect@db:6543/prefect"
    assert child["PGPASSWORD"] == "p@ss/w:rd%"  # decoded: what the server knows


def test_prefect_components_need_the_postgres_driver_like_prefect() -> None:
    base = {"PREFECT_SERVER_DATABASE_HOST": "db", "PREFECT_SERVER_DATABASE_USER": "u",
            "PREFECT_SERVER_DATABASE_NAME": "n"}
    s = config.load(env=base)  # without the driver, Prefect itself uses SQLite
    assert s.database_url is None
    assert any("PREFECT_SERVER_DATABASE_DRIVER is not set" in w for w in s.warnings)
    with pytest.raises(ConfigError) as info:
        config.load(env={"PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
                         "PREFECT_SERVER_DATABASE_HOST": "db"})
    assert "PREFECT_SERVER_DATABASE_USER, PREFECT_SERVER_DATABASE_NAME are not set" in (
        info.value.message)


def test_prefect_password_placeholder_is_filled_in() -> None:
    env = {"PREFECT_SERVER_DATABASE_CONNECTION_URL":
           "postgresql+asyncpg://u:${PREFECT_SERVER_DATABASE_PASSWORD}@db/prefect",
           "PREFECT_SERVER_DATABASE_PASSWORD": "Placeholder-Pw-1"}
    s = config.load(env=env)
    assert s.database_url == "postgresql://u:Placeholder-Pw-1@db/prefect"
    del env["PREFECT_SERVER_DATABASE_PASSWORD"]
    with pytest.raises(ConfigError, match=r"PREFECT_SERVER_DATABASE_PASSWORD.*not set"):
        config.load(env=env)


@pytest.mark.parametrize(("query", "libpq", "warned"), [
    ("ssl=require", "sslmode=require", None),
    ("ssl=true", "sslmode=require", None),
    ("ssl=false", "sslmode=disable", None),
    ("ssl=verify-full&sslrootcert=%2Fca.pem", "sslmode=verify-full&sslrootcert=%2Fca.pem", None),
    ("sslmode=verify-ca", "sslmode=verify-ca", None),
    ("timeout=7.5", "connect_timeout=8", None),
    ("command_timeout=30", "", "'command_timeout' has no libpq equivalent"),
    ("prepared_statement_cache_size=0&application_name=x", "application_name=x",
     "'prepared_statement_cache_size'"),
    ("ssl=weird", "", "ssl='weird' has no libpq sslmode"),
])
def test_asyncpg_query_parameters_map_to_libpq_or_warn(query: str, libpq: str,
                                                       warned: str | None) -> None:
    s = config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL":
                         f"postgresql+asyncpg://u@db/prefect?{query}"})
    assert s.database_url == "postgresql://u@db/prefect" + (f"?{libpq}" if libpq else "")
    if warned:
        assert len(s.warnings) == 1 and warned in s.warnings[0]
    else:
        assert s.warnings == ()


def test_prefect_tls_settings_become_libpq_parameters() -> None:
    tls = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_"
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u@db/prefect",
           f"{tls}ENABLED": "true", f"{tls}CA_FILE": "/ca.pem", f"{tls}CERT_FILE": "/c.pem",
           f"{tls}KEY_FILE": "/k.pem"}
    assert config.load(env=env).database_url == (
        "postgresql://u@db/prefect?sslmode=verify-full&sslrootcert=%2Fca.pem"
        "&sslcert=%2Fc.pem&sslkey=%2Fk.pem")
    s = config.load(env={**env, f"{tls}CA_FILE": ""})
    assert s.database_url.endswith("?sslmode=require&sslcert=%2Fc.pem&sslkey=%2Fk.pem")
    assert any("not verified" in w for w in s.warnings)


def test_sqlite_and_bad_prefect_urls() -> None:
    s = config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL":
                         "sqlite+aiosqlite:////root/.prefect/prefect.db"})
    assert s.database_url is None and "SQLite" in s.warnings[0]
    secret = "Leaky-Pw-3b9d"
    for bad, needle in [(f"mysql+aiomysql://u:{secret}@db/prefect", "not a PostgreSQL URL"),
                        (f"postgresql+asyncpg://u:{secret}@db:port/prefect", "not a valid"),
                        (f"nonsense {secret}", "not a valid")]:
        with pytest.raises(ConfigError) as info:
            config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL": bad})
        assert needle in info.value.message and secret not in info.value.message
        assert "PREFECT_API_DATABASE_CONNECTION_URL" in info.value.message


def test_a_prefect_password_is_a_registered_secret() -> None:
    from prefect_dr import redact

    pw = "Reg1stered&Pw/x"
    config.load(env={"PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
                     "PREFECT_SERVER_DATABASE_HOST": "db", "PREFECT_SERVER_DATABASE_USER": "u",
                     "PREFECT_SERVER_DATABASE_NAME": "n", "PREFECT_SERVER_DATABASE_PASSWORD": pw})
    assert redact.redact(f"failed: {pw} / Reg1stered%26Pw%2Fx") == "failed: *** / ***"


def test_own_flag_still_refuses_a_password_prefects_settings_may_carry_one() -> None:
    with pytest.raises(ConfigError, match="must not carry a password"):
        config.load(env={}, flags={"database_url": ("postgresql://u:pw12@db/p", "--database-url")})
    s = config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL": ASYNC_URL})
    assert "Pw-7c1e9a" in s.database_url  # accepted: Prefect's own secret


def test_problems_name_the_prefect_variable() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={"PREFECT_API_DATABASE_CONNECTION_URL":
                         "postgresql+asyncpg://u@[db/prefect"})
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in info.value.message


def test_every_path_setting_expands_the_home_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """'~' is expanded once, in config, for every path setting (it was expanded for some and
    not others: a recipients file under ~ could not be read)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    recipient = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"
    (tmp_path / "recipients.txt").write_text(recipient + "\n")
    settings = config.load(env={"PREFECT_DR_AGE_RECIPIENTS_FILE": "~/recipients.txt",
                                "PREFECT_DR_STAGING_DIR": "~",
                                "PREFECT_DR_AGE_IDENTITY_FILE": "~/id.txt"})
    assert settings.staging_dir == str(tmp_path)
    assert settings.age_identity_file == str(tmp_path / "id.txt")
    assert settings.recipients == [recipient]


@pytest.mark.parametrize("query", ["password=hunter2hunter2",
                                   "sslmode=disable&PassWord=hunter2hunter2",
                                   "sslpassword=hunter2hunter2"])
def test_a_password_in_the_query_is_refused_wherever_it_comes_from(query: str) -> None:
    """Issue 20, finding 5: ``?password=`` ran and reached pg_dump's argv."""
    url = f"postgresql://u@h/db?{query}"
    for kwargs in ({"env": {}, "flags": {"database_url": (url, "--database-url")}},
                   {"env": {"PREFECT_DR_DATABASE_URL": url}}):
        with pytest.raises(ConfigError) as info:
            config.load(**kwargs)
        assert "password" in info.value.message.lower()
        assert "hunter2hunter2" not in info.value.message
