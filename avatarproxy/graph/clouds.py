"""The Microsoft national clouds: each one's Graph endpoint and Entra ID authority host.

``graph.cloud`` picks a row; ``graph.api_version`` is appended to its Graph
root. An explicit ``graph.base_url`` or ``auth.authority`` (or
``AZURE_AUTHORITY_HOST``) always wins over the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cloud:
    graph: str  # Graph root, no version; the token scope is "<graph>/.default"
    authority_host: str


CLOUDS: dict[str, Cloud] = {
    "global": Cloud("https://graph.microsoft.com", "https://login.microsoftonline.com"),
    # US Government L4 (GCC High) and L5 (DoD) share the authority host.
    "usgov": Cloud("https://graph.microsoft.us", "https://login.microsoftonline.us"),
    "dod": Cloud("https://dod-graph.microsoft.us", "https://login.microsoftonline.us"),
    # Operated by 21Vianet.
    "china": Cloud("https://microsoftgraph.chinacloudapi.cn",
                   "https://login.partner.microsoftonline.cn"),
}
API_VERSIONS = ("v1.0", "beta")


def graph_base_url(cloud: str, api_version: str) -> str:
    return f"{CLOUDS[cloud].graph}/{api_version}"


def authority(cloud: str, tenant_id: str) -> str:
    return f"{CLOUDS[cloud].authority_host}/{tenant_id}"
