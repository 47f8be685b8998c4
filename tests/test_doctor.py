"""``avatarproxy doctor``: a pass/fail list over the real parts it checks."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from loopback import free_port

from avatarproxy.cli import main
from avatarproxy.demo.contoso import demo_groups
from avatarproxy.doctor import diagnose, exit_code, render, token_roles
from avatarproxy.models import Subject

ADELE = Subject("adele.vance@contoso.com")
ALL_ROLES = ["ProfilePhoto.Read.All", "User.ReadBasic.All", "User.Read.All",
             "GroupMember.Read.All", "Team.ReadBasic.All"]


def write_config(tmp_path: Path, fake_graph: Any, fake_idp: Any, redis_url: str,
                 secret: str | None = None, *, authority: str | None = None,
                 tenant: str | None = None, cache: str = "") -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[graph]\nbase_url = "{fake_graph.base_url}"\n'
        f'[auth]\ntenant_id = "{tenant or fake_idp.tenant}"\n'
        f'client_id = "{fake_idp.client_id}"\n'
        f'client_secret = "{secret or fake_idp.client_secret}"\n'
        f'authority = "{authority or fake_idp.authority}"\n'
        f'ca_file = "{fake_idp.ca_file}"\n[cache]\nredis_url = "{redis_url}"\n{cache}')
    return str(path)


async def run_doctor(config: str) -> tuple[int, str, str]:
    """The real command: its status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatarproxy", "doctor", "--config", config,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
    assert "PASS  layout: raqm " in text  # the text-layout engine docs/operations.md says it checks
    assert text.rstrip().endswith("doctor: 0 failed, 0 warnings, 10 passed")


async def test_a_person_serving_would_not_show_is_a_warning_naming_the_rule(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    megan = Subject("megan.bowen@contoso.com")
    guest = Subject("john_fabrikam.com#ext#@contoso.onmicrosoft.com")
    config = write_config(tmp_path, fake_graph, fake_idp, redis_url, cache=(
        '[security]\nallow_guests = false\n'
        f'blocked = ["{fake_graph.graph.person(megan.key).object_id}"]\n'))
    findings = await diagnose(config, [ADELE, megan, guest], env={})
    text = render(findings)
    assert exit_code(findings) == 0, text
    # The doctor sees the policy serving sees, the blocked list resolved to every name.
    assert (f"WARN  graph user {megan.key}: serve answers initials, never the photo: "
            "security.blocked names it") in text
    assert (f"WARN  graph user {guest.key}: serve answers 404: security.allowed_domains or "
            "security.allow_guests refuses it") in text
    assert not any(f.status == "warn" and ADELE.key in f.check for f in findings), text


async def test_missing_permission_and_dead_redis_fail_naming_what_to_fix(
        tmp_path: Path, tenant: tuple[Any, Any]) -> None:
    fake_graph, fake_idp = tenant
    fake_idp.roles = ["User.ReadBasic.All"]
    fake_graph.graph.denied = {"ProfilePhoto.Read.All", "User.Read.All", "Team.ReadBasic.All"}
    config = write_config(tmp_path, fake_graph, fake_idp, f"redis://127.0.0.1:{free_port()}")
    findings = await diagnose(config, [ADELE], env={})
    text = render(findings)
    assert exit_code(findings) == 1
    assert "FAIL  redis: cache.redis_url: unreachable: ConnectionError" in text
    assert "(serve starts on the memory tier and uses Redis once it answers)" in text
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
    assert ("FAIL  token: auth.client_secret: token request refused: invalid_client: "
            "AADSTS7000215") in text
    assert text.count("(serve refuses to start)") == 1
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


def test_fonts_say_whether_chinese_japanese_and_korean_names_are_drawn() -> None:
    from avatarproxy.config import load_settings
    from avatarproxy.doctor import check_imaging
    from avatarproxy.initials import DEBIAN_CJK_FONT

    def fonts(**overrides: str) -> str:
        settings = load_settings(env={}, overrides=overrides)
        (finding,) = [f for f in check_imaging(settings) if f.check == "fonts"]
        assert finding.status == "pass"
        return finding.detail

    assert fonts(**{"avatar.cjk_font": ""}).endswith("get the UPN's letters (avatar.cjk_font)")
    assert DEBIAN_CJK_FONT.is_file(), "install Debian's fonts-noto-cjk (tests/run does)"
    assert fonts() == "loaded DejaVuSans-Bold.ttf, NotoSansCJK-Bold.ttc"  # "auto" finds it


def test_cli_rejects_a_bad_subject_before_checking() -> None:
    assert main(["doctor", "--group", "not-a-guid"]) == 2


def test_token_roles_reads_only_well_formed_jwts() -> None:
    assert token_roles("opaque-token") is None
    assert token_roles("a.!!!.c") is None
    assert token_roles("e30.eyJyb2xlcyI6WyJiIiwiYSJdfQ.x") == ["a", "b"]


async def test_an_unreachable_authority_is_named_with_its_whole_cause_and_the_policy(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    where = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, fake_graph, fake_idp, redis_url,
                          authority=f"https://{where}/{fake_idp.tenant}")
    status, out, err = await run_doctor(config)
    assert status == 1 and "Traceback" not in err
    [token] = [line for line in out.splitlines() if line.startswith("FAIL  token:")]
    # Whole: the root cause, not a line cut inside urllib3's wrapper.
    assert token == (
        f"FAIL  token: auth.authority: OpenID discovery at https://{where}/{fake_idp.tenant} "
        f"failed: [Errno 111] Connection refused; check auth.authority and egress to {where}, "
        "and HTTPS_PROXY and NO_PROXY if egress goes through a proxy (serve starts degraded: "
        "cached avatars and initials until the authority answers)")
    assert "msal" not in out


async def test_a_wrong_redis_password_is_an_authentication_failure_naming_the_key(
        tmp_path: Path, tenant: tuple[Any, Any], redis_tls: Any) -> None:
    fake_graph, fake_idp = tenant
    wrong = tmp_path / "redis-password"
    wrong.write_text("not-the-password-Xy7\n")
    overrides = redis_tls.overrides
    config = write_config(tmp_path, fake_graph, fake_idp, overrides["cache.redis_url"],
                          cache=f'redis_password_file = "{wrong}"\n'
                                f'redis_ca_file = "{overrides["cache.redis_ca_file"]}"\n')
    status, out, err = await run_doctor(config)
    assert status == 1 and "Traceback" not in err
    [redis_line] = [line for line in out.splitlines() if line.startswith("FAIL  redis:")]
    assert redis_line.startswith("FAIL  redis: cache.redis_password_file: authentication "
                                 "failed (invalid username-password pair"), redis_line
    assert redis_line.endswith("(serve refuses to start)")
    assert "unreachable" not in redis_line and "Xy7" not in out + err


async def test_a_malformed_redis_url_is_a_finding_not_a_crash(
        tmp_path: Path, tenant: tuple[Any, Any]) -> None:
    fake_graph, fake_idp = tenant
    config = write_config(tmp_path, fake_graph, fake_idp, "redis://:hunter2@127.0.0.1:41089:99/0")
    status, out, err = await run_doctor(config)
    assert status == 1 and "Traceback" not in err, err
    assert ("FAIL  redis: cache.redis_url: not a valid URL (host:port/db, port a number "
            "1-65535): percent-encode a password's reserved characters, or use "
            "cache.redis_password_file") in out.splitlines()
    assert "PASS  token: acquired" in out  # the other checks still ran
    assert "hunter2" not in out + err


async def test_a_tenant_id_the_authority_overrides_is_a_warning(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    config = write_config(tmp_path, fake_graph, fake_idp, redis_url, tenant="fabrikam-tenant")
    status, out, _ = await run_doctor(config)
    assert status == 0, out
    assert (f"WARN  config: auth.tenant_id: 'fabrikam-tenant' is not the tenant of "
            f"auth.authority ('{fake_idp.tenant}'); auth.authority is used and auth.tenant_id "
            "ignored") in out.splitlines()


async def test_the_gravatar_index_makes_user_read_all_required(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    fake_graph, fake_idp = tenant
    fake_idp.roles = [r for r in ALL_ROLES if r != "User.Read.All"]
    config = write_config(tmp_path, fake_graph, fake_idp, redis_url, cache=(
        '[directory]\ngravatar = true\nindex_key = "' + "k" * 32 + '"\n'))
    text = render(await diagnose(config, [], env={}))
    assert "FAIL  permission: User.Read.All is missing: directory.gravatar's index needs it" \
        in text


async def test_contacts_read_granted_in_entra_id_is_a_warning(
        tmp_path: Path, tenant: tuple[Any, Any], redis_url: str) -> None:
    # Entra ID's grant has no mailbox scope: docs/contacts.md says to grant it in Exchange.
    fake_graph, fake_idp = tenant
    fake_idp.roles = [*ALL_ROLES, "Contacts.Read"]
    text = render(await diagnose(write_config(tmp_path, fake_graph, fake_idp, redis_url), [],
                                 env={}))
    assert ("WARN  permission: Contacts.Read granted in Entra ID reaches every mailbox of the "
            "tenant: scope it in Exchange with RBAC for Applications instead") in text
