"""The demo tenant, contoso.com: its people, their contacts and groups, with fixed ids
and portraits.

What ``avatarproxy demo`` serves and most tests start from: people with
photos of every kind (Exchange HD sizes, an Entra-only 300x200, ``240X240``
ids), without one (404, or the documented 1x1 placeholder), a guest, a UPN
starting with ``$``, one with a quote, and names in Cyrillic, Greek, Arabic,
Hebrew, Japanese, Chinese and Korean. Adele's mailbox keeps a few Outlook
contacts (``demo_contacts``), one with a photo.
"""

from __future__ import annotations

from dataclasses import dataclass

from .people import FakeContact, FakeGroup, FakePerson, contact_id
from .photos import portrait


@dataclass(frozen=True, slots=True)
class _Demo:
    upn: str
    object_id: str
    display_name: str
    given_name: str | None
    surname: str | None
    size: tuple[int, int] | None
    colours: tuple[str, str, str] = ("#1f6feb", "#8957e5", "#f0d9b5")
    placeholder: bool = False
    capital_x: bool = False


_DEMO = (
    _Demo("adele.vance@contoso.com", "87d349ed-44d7-43e1-9a83-5f2406dee5bd", "Adele Vance",
          "Adele", "Vance", (648, 648), ("#0b5394", "#6fa8dc", "#f6d7b0"), capital_x=True),
    _Demo("alex.wilber@contoso.com", "5c3b8d0e-7a4f-4c2e-9f1a-3e6d2b8c1f40", "Alex Wilber",
          "Alex", "Wilber", (240, 240), ("#38761d", "#b6d7a8", "#e0ac69")),
    _Demo("megan.bowen@contoso.com", "48d31887-5fad-4d73-a9f5-3c356e68a038", "Megan Bowen",
          "Megan", "Bowen", (96, 96), ("#990000", "#ea9999", "#c68642"), capital_x=True),
    _Demo("lee.gu@contoso.com", "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", "Lee Gu",
          "Lee", "Gu", (300, 200), ("#7f6000", "#ffd966", "#8d5524")),
    _Demo("lynne.robbins@contoso.com", "e8f1b2a3-4c5d-4e6f-9a0b-1c2d3e4f5a6b", "Lynne Robbins",
          "Lynne", "Robbins", (504, 504), ("#20124d", "#b4a7d6", "#ffdbac")),
    _Demo("diego.siciliani@contoso.com", "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a",
          "Diego Siciliani", "Diego", "Siciliani", None),
    _Demo("isaiah.langer@contoso.com", "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f", "Isaiah Langer",
          "Isaiah", "Langer", None, placeholder=True),
    _Demo("john_fabrikam.com#EXT#@contoso.onmicrosoft.com",
          "f0e1d2c3-b4a5-4968-8776-655443322110", "John Smith (Fabrikam)", "John", "Smith",
          (120, 120), ("#134f5c", "#76a5af", "#f1c27d")),
    _Demo("$admin@contoso.com", "0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d", "Contoso Admin",
          None, None, (64, 64), ("#434343", "#cccccc", "#3d85c6")),
    _Demo("o'brien@contoso.com", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "Patrick O'Brien",
          "Patrick", "O'Brien", (360, 360), ("#274e13", "#93c47d", "#ffe0bd"), capital_x=True),
    _Demo("elodie.dupre@contoso.com", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", "Élodie Dupré",
          "Élodie", "Dupré", (432, 432), ("#741b47", "#d5a6bd", "#e5c298")),
    _Demo("dmitry.ivanov@contoso.com", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e", "Дмитрий Иванов",
          "Дмитрий", "Иванов", None),
    _Demo("nikos.papadopoulos@contoso.com", "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6c",
          "Νίκος Παπαδόπουλος", "Νίκος", "Παπαδόπουλος", (48, 48),
          ("#0c343d", "#a2c4c9", "#d2a679")),
    _Demo("mohammed.ali@contoso.com", "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d", "محمد علي",
          "محمد", "علي", None),
    _Demo("david.levi@contoso.com", "4f5a6b7c-8d9e-4f0a-9b1c-2d3e4f5a6b7c", "דוד לוי",
          "דוד", "לוי", None),
    _Demo("taro.yamada@contoso.com", "8c9d0e1f-2a3b-4c4d-8e5f-6a7b8c9d0e1f", "山田 太郎",
          "太郎", "山田", None),
    _Demo("xiaoming.wang@contoso.com", "b5c6d7e8-f9a0-4b1c-8d2e-3f4a5b6c7d8e", "王小明",
          "小明", "王", None),
    _Demo("minjun.kim@contoso.com", "d1e2f3a4-b5c6-4d7e-9f8a-9b0c1d2e3f4a", "김민준",
          "민준", "김", None),
)
# Whose mailbox keeps the demo contacts.
CONTACTS_MAILBOX = "adele.vance@contoso.com"


def demo_people() -> list[FakePerson]:
    """The demo tenant (contoso.com): fixed ids, deterministic photos, fresh objects."""
    people = [
        FakePerson(upn=d.upn, object_id=d.object_id, display_name=d.display_name,
                   given_name=d.given_name, surname=d.surname,
                   photo=portrait(*d.size, *d.colours) if d.size else None,
                   placeholder=d.placeholder, capital_x=d.capital_x)
        for d in _DEMO
    ]
    for person in people:
        if person.upn == CONTACTS_MAILBOX:
            person.contacts = {c.object_id: c for c in demo_contacts()}
    return people


def demo_contacts() -> list[FakeContact]:
    """The Outlook contacts in Adele's mailbox: a photo (240x240), a Chinese name
    without one, and a front desk with a display name only."""
    return [
        FakeContact(contact_id("adele/rob.young"), "Rob Young", "Rob", "Young",
                    photo=portrait(240, 240, "#3d1c02", "#c27ba0", "#f9cb9c")),
        FakeContact(contact_id("adele/chan.taiman"), "陳大文", "大文", "陳"),
        FakeContact(contact_id("adele/front.desk"), "Fabrikam Front Desk"),
    ]


def demo_groups() -> list[FakeGroup]:
    """Demo groups and teams (a team is a group with the same object id)."""
    return [
        FakeGroup("2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", "Mark 8 Project Team",
                  photo=portrait(648, 648, "#5b0f00", "#e06666", "#fce5cd"), team=True),
        FakeGroup("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", "Retail Managers",
                  photo=portrait(240, 240, "#073763", "#9fc5e8", "#fff2cc")),
        FakeGroup("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "Sales and Marketing", team=True),
    ]
