"""What Graph sends back: OData JSON, error bodies (the real ones included), answer shapes.

The fake's answers are built here so that they look like Graph's own, byte
for byte where a client could tell: the OData content type, the error body
with its request id, a user's fields, a photo's metadata, the 1x1 GIF.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .people import FakeContact, FakePerson, PhotoOwner

_USER_FIELDS = ("id", "displayName", "givenName", "surname", "userPrincipalName")
_ODATA_JSON = ("application/json;odata.metadata=minimal;odata.streaming=true;"
               "IEEE754Compatible=false;charset=utf-8")
# A transparent 1x1 GIF: what ``/photos/{size}/$value`` sends for an absent size.
ONE_PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01"
                 b"\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
DEFAULT_ERRORS = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("ImageNotFound", "Exception of type 'Microsoft.Fast.Profile.Core.Exception."
                           "ImageNotFoundException' was thrown."),
    429: ("TooManyRequests", "Too many requests."),
    500: ("InternalServerError", "An internal server error occurred."),
    503: ("ServiceNotAvailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The gateway timed out."),
}

# Answers tenants really get (FACTS.md, "Graph's answers as tenants see them"):
# ``inject(status, error=...)`` sends one of these as the error body.
REAL_ERRORS: dict[str, tuple[int, str, str]] = {
    # A user without an Exchange Online mailbox (microsoft-graph-docs #8877, #5668).
    "no-mailbox": (400, "AuthenticationError", "Error authenticating with resource"),
    # A mailbox hosted on-premises (msgraph-sdk-dotnet #688).
    "on-premises": (404, "MailboxNotHostedInExchangeOnline",
                    "Mailbox is hosted by an on-premise or non-Exchange server, which is "
                    "not supported."),
    "item-not-found": (404, "ErrorItemNotFound", "The specified object was not found in "
                       "the store., The process failed to get the correct properties."),
    "image-not-found": (404, "ImageNotFound", "Exception of type 'Microsoft.Fast.Profile."
                        "Core.Exception.ImageNotFoundException' was thrown."),
    "resource-not-found": (404, "Request_ResourceNotFound", "Resource does not exist or one "
                           "of its queried reference-property objects are not present."),
}
# What a gateway in front of Graph sends when Graph is down: HTML, not JSON.
GATEWAY_HTML = (b"<html><head><title>503 Service Unavailable</title></head><body>"
                b"<h1>Service Unavailable</h1></body></html>")


def json_response(body: Mapping[str, Any], status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=headers)
    response.headers["Content-Type"] = _ODATA_JSON
    return response


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    request_id = str(uuid.uuid4())
    body = {"error": {"code": code, "message": message,
                      "innerError": {"request-id": request_id, "client-request-id": request_id}}}
    return json_response(body, status, {"request-id": request_id, **(headers or {})})


def image_not_found() -> web.Response:
    """What Graph answers for a photo that does not exist."""
    return error_response(404, "ImageNotFound", DEFAULT_ERRORS[404][1])


def user_response(root: str, person: FakePerson, select: list[str]) -> web.Response:
    values: dict[str, Any] = {"id": person.object_id, "displayName": person.display_name,
                              "givenName": person.given_name, "surname": person.surname,
                              "userPrincipalName": person.upn, "mail": person.mail,
                              "proxyAddresses": list(person.proxy_addresses),
                              "accountEnabled": person.account_enabled}
    fields = list(_USER_FIELDS)
    if select:
        by_lower = {name.lower(): name for name in values}
        fields = []
        for name in ",".join(select).split(","):
            if name.strip().lower() not in by_lower:
                return error_response(400, "Request_BadRequest", f"Could not find a property "
                                      f"named '{name.strip()}' on type 'microsoft.graph.user'.")
            fields.append(by_lower[name.strip().lower()])
    body: dict[str, Any] = {"@odata.context": f"{root}/$metadata#users/$entity"}
    body.update((name, values[name]) for name in fields)
    return json_response(body)


def contact_response(root: str, person: FakePerson, contact: FakeContact,
                     select: list[str]) -> web.Response:
    """An Outlook contact, with the fields ``$select`` names (unknown ones are ignored)."""
    values: dict[str, Any] = {"id": contact.object_id, "displayName": contact.display_name,
                              "givenName": contact.given_name, "surname": contact.surname}
    wanted = {name.strip().lower() for name in ",".join(select).split(",")} if select else None
    body: dict[str, Any] = {
        "@odata.context": f"{root}/$metadata#users('{person.object_id}')/contacts/$entity"}
    body.update((k, v) for k, v in values.items() if wanted is None or k.lower() in wanted)
    return json_response(body)


def meta_json(root: str, person: PhotoOwner, width: int, height: int, *,
              content_type: str = "image/jpeg", etag: str | None = None,
              context: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if context:
        meta["@odata.context"] = f"{root}/$metadata#users('{person.object_id}')/photo/$entity"
    meta.update({"@odata.mediaContentType": content_type,
                 "@odata.mediaEtag": person.media_etag if etag is None else etag,
                 "id": person.size_id(width, height), "width": width, "height": height})
    return meta
