"""The Microsoft Graph adapter: everything that talks to Graph or to its identity provider.

It owns:

- tokens: msal app-only client credentials off the event loop, and why none
  could be had, in an operator's words (``auth``, ``authproblems``);
  the national clouds' endpoints (``clouds``);
- Graph calls, each through one client and one shared session (``client``),
  and the directory helpers on top of it: ``$batch`` and paged listings
  (``directory``), users delta rounds for the Gravatar index (``usersdelta``);
- the one URL builder where user input becomes a Graph path (``urls``);
- when not to call Graph: ``Retry-After`` pauses shared by replicas and the
  circuit breaker (``throttle``); Exchange's limits per mailbox, four calls at
  once and refusals remembered (``mailboxes``);
- turning Graph's answers and network failures into our values and our
  exceptions (``replies``, ``resources``): ``GraphNotFound``,
  ``GraphPermissionDenied``, ``GraphUnavailable``, ``AuthError``,
  never a status code for the caller to interpret.

Nothing here knows HTTP serving or pixels, and this package and the avatar cache
never import each other, directly or through a third module. Import from the
module that owns a name (``from avatarproxy.graph.client import GraphClient``):
this file re-exports nothing, so that importing ``graph.settings`` or
``graph.clouds`` (as ``config`` does) does not load the client.
"""
