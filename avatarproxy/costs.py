"""What a request's steps cost its client's rate bucket (``ratelimit``), in tokens.

The service asks before a step that would call Graph or render: may this
client spend that many? Metadata is one call, and one more for the profile
when there is no photo or an object id's UPN is needed: a person never seen
is charged both (the unknown names a flood uses always cost both). A render
costs a token per 256x256 pixels it makes (started): 1 up to 256 px, 16 at
1024, which takes ~16 times as long to draw and encode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# Asked before a request costs Graph calls or renders: may its client spend this
# many (one token each)? False: the service answers RateLimited.
Admit = Callable[[int], Awaitable[bool]]

DOWNLOAD = 1
ADDRESS_LOOKUP = 1
# A Gravatar hash looked up in the index, found or not: a miss calls nothing, so
# without this a client trying hashes would never reach its limit.
HASH_LOOKUP = 1
# And a miss two more: what an address nobody has costs on /avatar/{address} (photo
# metadata and profile, then the address lookup: 3), so trying hashes is no cheaper
# than trying addresses.
HASH_MISS = 2
_RENDER_PIXELS = 256 * 256


def render_cost(side: int) -> int:
    """Tokens for a render of ``side`` x ``side`` pixels."""
    return -(-side * side // _RENDER_PIXELS)


async def admitted(admit: Admit | None, cost: int) -> bool:
    """True if ``admit`` lets the client spend ``cost`` (no ``admit``: no limit)."""
    return admit is None or await admit(cost)
