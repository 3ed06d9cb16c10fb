from __future__ import annotations

from prefect_dr import schema_gate as sg


def test_installed_prefect_knows_its_own_head() -> None:
    known = sg.installed_revisions()
    assert known is not None and "91e2b8f3d6a4" in known and "97429116795e" in known


def test_judge_with_installed_prefect() -> None:
    known = {"aaa", "bbb"}
    assert sg.judge("aaa", "bbb", known).ok
    assert sg.judge("bbb", "bbb", known).ok
    verdict = sg.judge("zzz", "bbb", known)
    assert not verdict.ok and "--allow-newer-schema" in verdict.reason


def test_judge_without_prefect_uses_known_heads() -> None:
    assert sg.judge("97429116795e", "91e2b8f3d6a4", None).ok  # 3.0 backup, 3.9 target
    newer = sg.judge("91e2b8f3d6a4", "97429116795e", None)
    assert not newer.ok and "Prefect 3.9.1" in newer.reason
    unknown = sg.judge("123456789abc", "91e2b8f3d6a4", None)
    assert not unknown.ok and "cannot tell" in unknown.reason
    assert not sg.judge(None, "x", None).ok
