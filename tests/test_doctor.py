"""``avatarproxy doctor``: a pass/fail list over the real parts it checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loopback import free_port

from avatarproxy.cli import main
from avatarproxy.doctor import diagnose, exit_code, render, token_roles
from avatarproxy.fakegraph import demo_groups
from avatarproxy.models import Subject

ADELE = Subject("adele.vance@contoso.com")
ALL_ROLES = ["ProfilePhoto.Read.All", "User.ReadBasic.All", "User.Read.All",
             "GroupMember.Read.All", "Team.ReadBasic.All"]


def write_config(tmp_path: Path, fake_graph: Any, fake_idp: Any, redis_url: str,
                 secret: str | None = None) -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[graph]\nbase_url = "{fake_graph.base_url}"\n'
        f'[auth]\ntenant_id = "{fake_idp.tenant}"\nclient_id = "{fake_idp.client_id}"\n'
        f'client_secret = "{secret or fake_idp.client_secret}"\n'
        f'authority = "{fake_idp.authority}"\n'
        f'ca_file = "{fake_idp.ca_file}"\n[cache]\nredis_url = "{redis_url}"\n')
    return str(path)


@pytest.fixture
def tenant(fake_graph: Any, fake_idp: Any) -> tuple[Any, Any]:
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    for group in demo_groups():
        fake_graph.graph.add_group(group)
    fake_idp.roles = list(ALL_ROLES)
    return fake_graph, fake_idp


async def test_a_healthy_deployment_passes_every_check(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    team = demo_groups()[0]
    findings = await diagnose(write_config(tmp_path, fake_graph, fake_idp, redis_url),
                              [ADELE, Subject(team.object_id, "team")], env={})
    text = render(findings)
    assert exit_code(findings) == 0, text
    assert [f for f in findings if f.status != "pass"] == [], text
    assert "PASS  redis: PING median" in text
    assert "app roles: GroupMember.Read.All, ProfilePhoto.Read.All, Team.ReadBasic.All" in text
    assert f"PASS  graph user {ADELE.key}: photo 648x648" in text
    assert f"PASS  graph team {team.object_id}: name 'Mark 8 Project Team'" in text
    assert text.rstrip().endswith("doctor: 0 failed, 0 warnings, 9 passed")


async def test_missing_permission_and_dead_redis_fail_naming_what_to_fix(
        tmp_path: Path, tenant: tuple[Any, Any]) -> None:
    fake_graph, fake_idp = tenant
    fake_idp.roles = ["User.ReadBasic.All"]
    fake_graph.graph.denied = {"ProfilePhoto.Read.All", "User.Read.All", "Team.ReadBasic.All"}
    config = write_config(tmp_path, fake_graph, fake_idp, f"redis://127.0.0.1:{free_port()}")
    findings = await diagnose(config, [ADELE], env={})
    text = render(findings)
    assert exit_code(findings) == 1
    assert "FAIL  redis: unreachable" in text
    assert ("FAIL  permission: ProfilePhoto.Read.All is missing: grant the application "
            "permission and admin consent") in text
    assert "WARN  permission: Team.ReadBasic.All is missing: needed for team photos" in text
    assert (f"FAIL  graph user {ADELE.key}: Graph 403: grant the application permission "
            "ProfilePhoto.Read.All") in text
    assert f"PASS  graph user {ADELE.key}: name 'Adele Vance'" in text


async def test_refused_credentials_fail_the_token_check_without_leaking_the_secret(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    config = write_config(tmp_path, fake_graph, fake_idp, redis_url, "wrong-secret-value")
    findings = await diagnose(config, [ADELE], env={})
    text = render(findings)
    assert exit_code(findings) == 1
    assert "FAIL  token: token request refused" in text
    assert "wrong-secret-value" not in text
    assert not any(f.check.startswith("graph") for f in findings)  # no token, no Graph calls


def test_cli_prints_the_list_and_exits_non_zero_on_bad_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "c.toml"
    config.write_text('[avatar]\nextra_fonts = ["/nonexistent/font.ttf"]\n')
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config: auth.tenant_id: required (or AZURE_TENANT_ID)" in out
    assert "FAIL  fonts: avatar.extra_fonts: cannot load /nonexistent/font.ttf" in out
    assert "PASS  codecs: jpeg, png, webp and avif encode" in out
    assert "doctor: 4 failed" in out


def test_cli_rejects_a_bad_subject_before_checking() -> None:
    assert main(["doctor", "--group", "not-a-guid"]) == 2


def test_token_roles_reads_only_well_formed_jwts() -> None:
    assert token_roles("opaque-token") is None
    assert token_roles("a.!!!.c") is None
    assert token_roles("e30.eyJyb2xlcyI6WyJiIiwiYSJdfQ.x") == ["a", "b"]
