"""People the tests add to the fake Graph beyond the demo tenant."""

from __future__ import annotations

from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait


def pradeep(object_id: str) -> FakePerson:
    """Someone whose mail and aliases are not the UPN, with a photo."""
    return FakePerson(
        "pradeep.gupta@contoso.onmicrosoft.com", object_id, "Pradeep Gupta",
        photo=portrait(240, 240, "#222", "#999", "#c96"), mail="p.gupta@contoso.com",
        proxy_addresses=("SMTP:p.gupta@contoso.com", "smtp:pradeep@contoso.com"))
