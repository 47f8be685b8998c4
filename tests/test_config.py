from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from loopback import free_port

from avatarproxy.config import OPTIONS, load_settings, render_example
from avatarproxy.errors import ConfigError
from avatarproxy.graph.settings import check_credentials
from avatarproxy.redis import connection

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_give_the_embedded_in_memory_setup() -> None:
    settings = load_settings(env={})
    assert settings.redis.redis_url == ""
    assert settings.avatar.max_size == 1024
    assert settings.graph.base_url == "https://graph.microsoft.com/v1.0"
    assert settings.cache.metadata_ttl_seconds == 3600
    assert settings.cache.negative_ttl_seconds == 900


def test_precedence_file_then_azure_then_avatarproxy_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[auth]\ntenant_id = "from-file"\nclient_id = "file-client"\n'
                      '[server]\nport = 9000\n[cache]\nmemory_max_bytes = 1000\n')
    env = {"AZURE_TENANT_ID": "from-azure", "AZURE_CLIENT_ID": "azure-client",
           "AVATARPROXY_AUTH_TENANT_ID": "from-avatarproxy", "AVATARPROXY_SERVER_PORT": "9100"}
    settings = load_settings(config, env=env, overrides={"server.port": 9200})
    assert settings.auth.tenant_id == "from-avatarproxy"
    assert settings.auth.client_id == "azure-client"
    assert settings.server.port == 9200
    assert settings.cache.memory_max_bytes == 1000


def test_lists_come_comma_separated_from_the_environment() -> None:
    settings = load_settings(env={"AVATARPROXY_AVATAR_EXTRA_FONTS": "/a.ttf, /b.ttf"})
    assert settings.avatar.extra_fonts == ("/a.ttf", "/b.ttf")


def test_azure_authority_host_builds_the_authority() -> None:
    settings = load_settings(env={"AZURE_TENANT_ID": "t1",
                                  "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/"})
    assert settings.auth.authority == "https://login.microsoftonline.us/t1"


def test_every_problem_is_reported_at_once_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = "eighty"\nhostname = "x"\n[cache]\nredis = 1\n'
                      '[avatar]\ndefault_format = "gif"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={"AVATARPROXY_AVATAR_MAX_SIZE": "0",
                                   "AVATARPROXY_GRAPH_TIMEOUT_SECONDS": "soon"})
    text = "\n".join(info.value.problems)
    for fragment in ("server.port: expected an integer", "server.hostname: unknown key",
                     "cache.redis: unknown key", "avatar.default_format: must be one of",
                     "avatar.max_size: must be at least 1", "AVATARPROXY_AVATAR_MAX_SIZE",
                     "graph.timeout_seconds: expected a number"):
        assert fragment in text
    assert len(info.value.problems) == 6


def test_unreadable_or_invalid_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_serve_needs_a_tenant_a_client_and_exactly_one_credential() -> None:
    problems = check_credentials(load_settings(env={}).auth)
    assert any("auth.tenant_id" in p for p in problems)
    assert any("auth.client_id" in p for p in problems)
    assert any("one of client_secret" in p for p in problems)
    both = load_settings(env={"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c",
                              "AZURE_CLIENT_SECRET": "s",
                              "AVATARPROXY_AUTH_CERTIFICATE_PATH": "/x.pem"}).auth
    assert check_credentials(both) == [
        "auth: set only one credential, got client_secret, certificate_path"]


def test_committed_example_config_matches_the_declarations() -> None:
    assert (ROOT / "config.example.toml").read_text() == render_example()


def test_example_config_loads_and_equals_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(render_example())
    assert load_settings(path, env={}) == load_settings(env={})


def test_the_configuration_doc_documents_every_option() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"{o.section}.{o.key}" for o in OPTIONS if f"`{o.section}.{o.key}`" not in readme]
    assert missing == []


def test_cli_reports_config_problems_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "avatarproxy", "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AVATARPROXY_CACHE_METADATA_TTL_SECONDS": "-5",
             "AZURE_CLIENT_SECRET": "hunter2-secret"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "avatarproxy: config: server.port: must be at least 1, got 0 (from the command line)" \
        in lines
    assert any("cache.metadata_ttl_seconds" in line for line in lines)
    assert "hunter2-secret" not in result.stderr


def test_options_that_contradict_each_other_are_reported_with_the_rest() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AVATARPROXY_CACHE_STALE_TTL_SECONDS": "600",
                           "AVATARPROXY_CACHE_REDIS_MODE": "cluster",
                           "AVATARPROXY_AVATAR_MAX_SIZE": "0"},
                      overrides={"cache.redis_sentinels": ["10.0.0.1:26379"]})
    assert info.value.problems == [
        "avatar.max_size: must be at least 1, got 0 (from AVATARPROXY_AVATAR_MAX_SIZE)",
        "cache.stale_ttl_seconds: must be at least cache.metadata_ttl_seconds (3600), "
        "got 600 (from AVATARPROXY_CACHE_STALE_TTL_SECONDS)",
        "cache.stale_ttl_seconds: must be at least cache.negative_ttl_seconds (900), "
        "got 600 (from AVATARPROXY_CACHE_STALE_TTL_SECONDS)",
        "cache.redis_url: cluster mode needs redis:// or rediss://host:port of any one node",
        "cache.redis_sentinels: used only when cache.redis_mode is sentinel, which is "
        "'cluster' (from AVATARPROXY_CACHE_REDIS_MODE)"]
    # An option already wrong on its own is not compared with others.
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AVATARPROXY_CACHE_STALE_TTL_SECONDS": "0"})
    assert len(info.value.problems) == 1


def test_serve_reports_start_up_problems_as_config_lines_whatever_the_workers() -> None:
    # Found by the composition root; with several workers each used to die with a traceback.
    result = subprocess.run(
        [sys.executable, "-m", "avatarproxy", "serve", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AVATARPROXY_SERVER_WORKERS": "2",
             "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s",
             "AVATARPROXY_CACHE_REDIS_MODE": "sentinel",
             "AVATARPROXY_SERVER_TRUSTED_PROXIES": "10.0.0.0/8,nope",
             "AVATARPROXY_AVATAR_EXTRA_FONTS": "/nonexistent/font.ttf"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "avatarproxy: config: cache.redis_sentinels: sentinel mode needs at least one " \
        "host:port" in lines
    assert any(line.startswith("avatarproxy: config: server.trusted_proxies:") and "nope" in line
               for line in lines)
    assert any(line.startswith("avatarproxy: config: avatar.extra_fonts: cannot load")
               for line in lines)


def test_the_metrics_port_must_be_another_port_or_none() -> None:
    assert load_settings(env={}).server.metrics_port == 0  # single port: /metrics beside avatars
    assert load_settings(env={"AVATARPROXY_SERVER_METRICS_PORT": "9090"}).server.metrics_port \
        == 9090
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AVATARPROXY_SERVER_METRICS_PORT": "8080"})
    assert info.value.problems == [
        "server.metrics_port: must differ from server.port (8080), or be 0 to serve /metrics "
        "there (from AVATARPROXY_SERVER_METRICS_PORT)"]


@pytest.mark.parametrize(("key", "value"), [
    ("auth.authority", "https://[::1/contoso-tenant"),
    ("auth.authority", "https://login.example:99999/contoso-tenant"),
    ("graph.base_url", "http://[::1/v1.0"),
])
def test_a_url_that_cannot_be_split_is_one_line_naming_its_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, overrides={key: value})
    assert [p for p in caught.value.problems if p.startswith(f"{key}: not a valid URL")]


@pytest.mark.parametrize("query", ["decode_responses=true", "protocol=9&db=1",
                                   "ssl_cert_reqs=bogus"])
def test_redis_url_query_options_that_override_the_service_are_refused(query: str) -> None:
    settings = load_settings(env={}, overrides={
        "cache.redis_url": f"redis://:hunter2@127.0.0.1:6390/0?{query}"})
    problems = connection.check(settings.redis)
    assert len(problems) == 1 and problems[0].startswith("cache.redis_url: no query options")
    assert "hunter2" not in problems[0]


def test_a_new_option_is_one_field_loaded_from_file_env_and_documented(tmp_path: Path) -> None:
    # The declaration is the whole story: the loader reads it from every source,
    # checks its bounds, masks it if secret, and the example shows it.
    from avatarproxy.options import declared, option, settings

    @settings("server")
    class Extra:
        answer: int = option(42, "The answer.", minimum=1)
        names: tuple[str, ...] = option((), "Some names.")
        token: str = option("", "A token.", secret=True)

    options = declared(Extra)
    assert [(o.name, o.kind, o.default) for o in options] == [
        ("server.answer", int, 42), ("server.names", list, []), ("server.token", str, "")]
    assert options[0].env_name == "AVATARPROXY_SERVER_ANSWER"
    assert "token='***'" in repr(Extra(answer=1, names=("a",), token="s3cret"))
    assert "s3cret" not in repr(Extra(answer=1, names=("a",), token="s3cret"))


def test_a_settings_field_that_is_not_an_option_is_refused() -> None:
    import dataclasses

    from avatarproxy.options import declared, option, settings

    @settings("server")
    class Loose:
        declared_one: int = option(1, "Declared.")
        loose: int = dataclasses.field(default=2)

    with pytest.raises(TypeError, match=r"Loose\.loose: declare it with option"):
        declared(Loose)


def test_every_option_is_declared_once() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
