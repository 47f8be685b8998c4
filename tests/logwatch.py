"""Finding people in log lines: what ``logging.log_upn = false`` promises to keep out."""

from __future__ import annotations

import logging
import re

from avatarproxy import logs

# A UPN or e-mail address (a guest's #EXT# included), also percent-encoded
# ("%40") as in a Graph URL.
ADDRESS = re.compile(r"[A-Za-z0-9'._!#^~$%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                     r"\.[A-Za-z]{2,}")


def line_text(record: logging.LogRecord) -> str:
    """What a log line shows: the message, the fields ours add, an exception's text."""
    parts = [record.getMessage(), *(
        str(getattr(record, name)) for name in ("subject", "route") if hasattr(record, name))]
    if record.exc_info:
        parts.append(str(record.exc_info[1]))
    return " ".join(parts)


def upns_hidden() -> bool:
    """Whether log lines hide people now (``logging.log_upn`` off)."""
    return logs.subject_ref("a@b.co") != "a@b.co"


class Lines(logging.Handler):
    """Collects every record it is given, with its text and whether names were hidden."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[logging.LogRecord, str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record, line_text(record), upns_hidden()))

    def naming_people(self) -> list[str]:
        """Lines written while names were to be hidden that name someone anyway.
        aiohttp's own access log is left out: the service turns it off
        (``logs.configure``); its raw paths are the ingress' business."""
        return [f"{record.levelname} {record.name}: {text}"
                for record, text, hidden in self.lines
                if hidden and record.name != "aiohttp.access" and ADDRESS.search(text)]
