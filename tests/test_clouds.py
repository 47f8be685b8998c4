"""graph.cloud and graph.api_version: endpoints, authorities and token scopes."""

from __future__ import annotations

import pytest

from avatarproxy.config import load_settings
from avatarproxy.errors import ConfigError
from avatarproxy.graph.auth import scope_for
from avatarproxy.graph.clouds import CLOUDS

# Copied from Microsoft's national-cloud deployment documentation (FACTS.md):
# cloud -> (Graph root, Entra ID authority host).
DOCUMENTED = {
    "global": ("https://graph.microsoft.com", "https://login.microsoftonline.com"),
    "usgov": ("https://graph.microsoft.us", "https://login.microsoftonline.us"),
    "dod": ("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
    "china": ("https://microsoftgraph.chinacloudapi.cn",
              "https://login.partner.microsoftonline.cn"),
}


def test_cloud_table_matches_the_documented_hosts() -> None:
    assert {name: (c.graph, c.authority_host) for name, c in CLOUDS.items()} == DOCUMENTED


@pytest.mark.parametrize("cloud", sorted(DOCUMENTED))
def test_cloud_selects_graph_endpoint_authority_and_scope(cloud: str) -> None:
    graph, authority_host = DOCUMENTED[cloud]
    settings = load_settings(env={"AVATARPROXY_GRAPH_CLOUD": cloud, "AZURE_TENANT_ID": "t1"})
    assert settings.graph.base_url == f"{graph}/v1.0"
    assert settings.auth.authority == f"{authority_host}/t1"
    assert scope_for(settings.graph.base_url) == f"{graph}/.default"


def test_default_is_the_global_cloud_at_v1() -> None:
    settings = load_settings(env={"AZURE_TENANT_ID": "t1"})
    assert settings.graph.base_url == "https://graph.microsoft.com/v1.0"
    assert settings.auth.authority == "https://login.microsoftonline.com/t1"


def test_beta_is_appended_to_the_clouds_endpoint() -> None:
    settings = load_settings(env={"AVATARPROXY_GRAPH_CLOUD": "china",
                                  "AVATARPROXY_GRAPH_API_VERSION": "beta"})
    assert settings.graph.base_url == "https://microsoftgraph.chinacloudapi.cn/beta"


def test_explicit_base_url_and_authority_win_over_the_cloud() -> None:
    settings = load_settings(env={"AVATARPROXY_GRAPH_CLOUD": "usgov", "AZURE_TENANT_ID": "t1"},
                             overrides={"graph.base_url": "https://graph.proxy.example/v1.0",
                                        "auth.authority": "https://idp.example/t1"})
    assert settings.graph.base_url == "https://graph.proxy.example/v1.0"
    assert settings.auth.authority == "https://idp.example/t1"
    assert scope_for(settings.graph.base_url) == "https://graph.proxy.example/.default"


def test_azure_authority_host_wins_over_the_cloud() -> None:
    settings = load_settings(env={"AVATARPROXY_GRAPH_CLOUD": "china", "AZURE_TENANT_ID": "t1",
                                  "AZURE_AUTHORITY_HOST": "https://login.example.test"})
    assert settings.auth.authority == "https://login.example.test/t1"
    assert settings.graph.base_url == "https://microsoftgraph.chinacloudapi.cn/v1.0"


def test_unknown_cloud_or_version_is_a_config_problem_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AVATARPROXY_GRAPH_CLOUD": "mars",
                           "AVATARPROXY_GRAPH_API_VERSION": "v2"})
    text = "\n".join(info.value.problems)
    assert "graph.cloud: must be one of global, usgov, dod, china" in text
    assert "graph.api_version: must be one of v1.0, beta" in text
