"""Our exception hierarchy. No HTTP in here: ``web`` maps these to statuses once."""

from __future__ import annotations


class AvatarProxyError(Exception):
    """Base class. ``public`` is safe to show a client; ``str()`` may hold more."""

    public = "internal error"


class BadRequest(AvatarProxyError):
    """The client's request is malformed (bad UPN, size, format...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.public = reason


class NotFound(AvatarProxyError):
    """Nothing to serve (``?fallback=404`` and no photo). ``transient``: Graph could not
    say whether there is a photo (an outage): what stands in for it is for now only."""

    public = "not found"

    def __init__(self, message: str = "", *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RefusedPerson(NotFound):
    """The person an address or an object id leads to is refused (another domain, a
    guest): learnt from Graph, so about that person, not about the URL asked."""


class Forbidden(AvatarProxyError):
    """URL signing is on and the request's ``sig`` is missing or wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.public = reason


class RateLimited(AvatarProxyError):
    """The client used up its allowance of cache misses; it gets uncached initials."""

    public = "rate limited"


class Blocked(AvatarProxyError):
    """``security.blocked`` names the person a request reached (by any of their names),
    or cannot be checked now (``transient``): initials, never the photo."""

    public = "not found"

    def __init__(self, transient: bool = False) -> None:
        super().__init__("blocked person" if not transient else "blocked list unresolved")
        self.transient = transient


class ConfigError(AvatarProxyError):
    """Configuration is invalid; carries every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class InvalidImage(AvatarProxyError):
    """Bytes that should be an image are not one we accept (corrupt, too large...)."""

    public = "invalid image"


class GraphError(AvatarProxyError):
    """Base for failures talking to Microsoft Graph or the identity provider.

    ``detail`` is Graph's own error message, when it sent one: for operators'
    commands, never for log lines (it may name the person). ``code`` is its
    error code, for callers that must tell one 400 from another.
    """

    public = "upstream error"
    detail = ""
    code = ""  # Graph's error code (``syncStateNotFound``...), when it sent one


class GraphNotFound(GraphError):
    """Graph says the user or photo does not exist (any 404). Cacheable: "no photo"."""


class GraphPermissionDenied(GraphError):
    """403: the app lacks a permission. Not cached as "no photo"."""

    def __init__(self, message: str, permission: str) -> None:
        super().__init__(message)
        self.permission = permission


class GraphUnavailable(GraphError):
    """Graph is throttling, failing or unreachable. Transient: never cached.

    ``retry_after`` is Graph's Retry-After in seconds; ``throttle_scope`` its
    ``x-ms-throttle-scope`` header (whose limit was hit), when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None,
                 throttle_scope: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.throttle_scope = throttle_scope


class Overloaded(AvatarProxyError):
    """This process is past a load cap or a request's deadline: answer cheaply now."""

    public = "overloaded"


class AuthError(GraphError):
    """No token could be acquired (bad credentials, identity provider down).

    ``key`` names the setting an operator should look at and ``hint`` what to
    do; ``misconfigured``: the identity provider (or our own check) refused the
    configuration itself, so waiting will not help and ``serve`` refuses to
    start. Otherwise it is an outage, and ``serve`` starts degraded.
    """

    def __init__(self, message: str, *, key: str = "", hint: str = "",
                 misconfigured: bool = False) -> None:
        super().__init__(message)
        self.key = key
        self.hint = hint
        self.misconfigured = misconfigured
