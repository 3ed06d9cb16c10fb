from __future__ import annotations

from prefect_dr import redact


def test_registered_secret_is_masked() -> None:
    redact.register("correct-horse-battery")
    assert redact.redact("token correct-horse-battery here") == "token *** here"


def test_short_values_are_not_registered() -> None:
    redact.register("ab")
    assert redact.redact("abc ab") == "abc ab"


def test_url_passwords_and_age_keys_are_masked_by_shape() -> None:
    text = ("postgresql://bob:pa55word@host/db and AGE-SECRET-KEY-1QQQQQQQQQQQQ "
            "and password=xyz123 and password='a b'")
    out = redact.redact(text)
    assert "pa55word" not in out and "QQQQ" not in out and "xyz123" not in out
    assert "'a b'" not in out
    assert "postgresql://bob:***@host/db" in out


def test_url_without_password() -> None:
    assert redact.url_without_password("http://h:1/x") == "http://h:1/x"
    assert redact.url_without_password("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
