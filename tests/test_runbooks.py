"""The runbooks (docs/operations.md) quote what the service really logs and counts: an
operator who greps for a runbook's words finds the service's lines."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from appclient import MakeClient, get

ROOT = Path(__file__).resolve().parent.parent
ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
MEGAN = "megan.bowen@contoso.com"
LYNNE = "lynne.robbins@contoso.com"


def runbook(title: str) -> str:
    """The text of docs/operations.md section "### Runbook: <title>"."""
    readme = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(rf"^### Runbook: {re.escape(title)}\n(.*?)(?=^##)", readme + "\n##",
                      re.MULTILINE | re.DOTALL)
    assert found is not None, f"docs/operations.md: no runbook {title}"
    return " ".join(found.group(1).split())  # lines joined as a reader sees them


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name.startswith("avatarproxy") and r.levelno >= logging.WARNING]


async def test_a_wrong_secret_logs_and_counts_what_the_token_runbook_says(
        make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(auth__client_secret="not-the-secret")
    for upn in (ADELE, ALEX):
        assert (await get(client, f"/avatar/{upn}/48"))[1]["X-Avatar-Source"] == "initials"
    text = runbook("AvatarproxyTokenAcquisitionFailing")
    lines = {(r.name, r.getMessage()) for r in warnings(caplog)}
    assert {name for name, _ in lines} == {"avatarproxy.auth", "avatarproxy.service"}
    for name, message in lines:
        assert f"`{name}`" in text, name
        # The runbook quotes each line up to the identity provider's own words.
        quoted = message.split(": AADSTS")[0]
        assert quoted in text, message
    exported = (await get(client, "/metrics"))[2].decode()
    assert 'avatarproxy_initials_fallback_total{reason="AuthError"}' in exported
    assert 'avatarproxy_initials_fallback_total{reason="AuthError"}' in text


async def test_every_reason_for_initials_is_in_the_runbook(
        make_client: MakeClient, fake_graph: Any) -> None:
    graph = fake_graph.graph
    pattern = r'avatarproxy_initials_fallback_total\{reason="(\w+)"\} ([0-9.e+]+)'
    client = await make_client(graph__max_retries=0)
    # The counters are per process and other tests add to them: look at what this one adds.
    before = dict(re.findall(pattern, (await get(client, "/metrics"))[2].decode()))
    graph.inject(503, times=20, path_contains=ALEX)  # Graph failing
    graph.inject(403, times=5, path_contains=MEGAN)  # a permission missing
    graph.fault("corrupt", times=5, path_contains=f"{LYNNE}/photos/48x48/$value")  # no image
    for upn in (ALEX, MEGAN, LYNNE):
        assert (await get(client, f"/avatar/{upn}/48"))[1]["X-Avatar-Source"] == "initials"
    bad = await make_client(auth__client_secret="not-the-secret")
    assert (await get(bad, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "initials"
    exported = (await get(client, "/metrics"))[2].decode()
    reasons = {reason for reason, count in re.findall(pattern, exported)
               if float(count) > float(before.get(reason, 0))}
    assert {"AuthError", "GraphUnavailable", "GraphPermissionDenied", "InvalidImage"} <= reasons
    text = runbook("AvatarproxyInitialsBecauseOfErrors")
    # Whatever this made the service count, the runbook explains.
    assert [r for r in reasons if f"`{r}`" not in text] == []
