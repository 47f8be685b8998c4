vcl 4.1;
# avatarproxy's caching front: Varnish in the pod, in front of the service
# (deployment.yaml, the front container; docs/operations.md, "The caching
# front"). tests/test_front.py and test_front_operations.py run this very file
# before the real service, one test per rule below.
#
# What it caches: 200 answers under /avatar/ that the service marks public
# (photos and initials), keyed by the URL as sent (path and query: ?v=3 cache
# busters and ?sig= signatures are part of it) and by the headers the service
# names in Vary: the format class (Accept, made canonical below), Origin (when
# server.cors_origins is set) and Sec-Fetch-Site, both reduced to the values
# the service tells apart. For at most edge.max_age_seconds
# (AVATARPROXY_EDGE_MAX_AGE_SECONDS, default 60) or the answer's own max-age if
# shorter; then it asks the service again with If-None-Match, which the
# service answers from memory with a 304. The answers browsers get keep the
# service's headers (Cache-Control, ETag, Vary...).
#
# What it never caches: no-store answers (the service's stand-in initials when
# it is overloaded, past its deadline or rate-limiting a client), errors,
# private answers (another site's page), anything outside /avatar/.
#
# Stale if error: the service's own trouble (a stand-in it marks overload,
# deadline or error in X-Avatar-Stand-In, a 5xx, no answer) never replaces a
# copy the front holds. It keeps serving that copy, asking the service again
# every 5 s, until AVATARPROXY_EDGE_STALE_IF_ERROR_SECONDS (default a day)
# after the copy went stale. A client over its rate gets its stand-in alone:
# the copy is neither kept nor dropped, and the next request asks the service
# again. A 4xx does replace it (the person was blocked, the signature key
# rotated...).
#
# Internal headers, on the copies and never sent to browsers (vcl_deliver):
# X-Front-Origin and X-Front-Stale-At, when the service made (or last
# confirmed) the copy and when it went stale, in seconds since the epoch, and
# X-Front-Date, the service's Date then; X-Front-Kept, on a copy the front
# kept; X-Front-Again, the marker of a stand-in for one client.

import std;

# backend app (the service, on loopback) and backend keep (this front's own
# "keep" socket): the addresses, in a file of their own.
include "backend.vcl";

sub vcl_recv {
    if (local.socket == "keep") {
        # The front asking itself (vcl_backend_response): "still valid".
        return (synth(304));
    }
    # Our own marker: a client must not choose to be served a stale copy.
    unset req.http.X-Front-Keep;
    if (req.url == "/front/healthz") {
        # The front's own probes: answered without the service, which starts
        # after the front does.
        return (synth(200, "OK"));
    }
    if (req.url !~ "^/avatar/" || (req.method != "GET" && req.method != "HEAD")) {
        # The probes, /metrics, the demo page, CORS preflights: to the service
        # as they are (X-Forwarded-For appended, as for every request).
        return (pass);
    }
    call canonical_accept;
    call canonical_page;
    # The service reads neither; a page on the same host sends its cookies.
    unset req.http.Cookie;
    unset req.http.Authorization;
    if (req.restarts > 0) {
        # The one restart (vcl_deliver): the service rate-limited this client
        # when the front asked it about a copy. Its answer, for it alone.
        return (pass);
    }
    return (hash);
}

# Replace Accept with one canonical value per format class, so the cache holds
# one copy per class instead of one per browser's header, and the service
# (negotiation.py) chooses the format from that value. The class is which of
# image/avif and image/webp the header lists with a q above 0: all the service
# looks at. tests/test_front_accept.py checks, over real browsers' headers, that
# the service chooses the same format for the canonical value as for the header.
sub canonical_accept {
    set req.http.X-Front-Avif = "no";
    set req.http.X-Front-Webp = "no";
    if (req.http.Accept ~ "(?i)(^|,)\s*image/avif\s*(;|,|$)") {
        set req.http.X-Front-Q = regsub(req.http.Accept,
            "(?i)^(?:.*,)?\s*image/avif\s*((?:;[^,]*)?)(?:,.*)?$", "\1");
        call q_above_zero;
        set req.http.X-Front-Avif = req.http.X-Front-Q;
    }
    if (req.http.Accept ~ "(?i)(^|,)\s*image/webp\s*(;|,|$)") {
        set req.http.X-Front-Q = regsub(req.http.Accept,
            "(?i)^(?:.*,)?\s*image/webp\s*((?:;[^,]*)?)(?:,.*)?$", "\1");
        call q_above_zero;
        set req.http.X-Front-Webp = req.http.X-Front-Q;
    }
    if (req.http.X-Front-Avif == "yes" && req.http.X-Front-Webp == "yes") {
        set req.http.Accept = "image/avif,image/webp,*/*";
    } elsif (req.http.X-Front-Avif == "yes") {
        set req.http.Accept = "image/avif,*/*";
    } elsif (req.http.X-Front-Webp == "yes") {
        set req.http.Accept = "image/webp,*/*";
    } else {
        set req.http.Accept = "*/*";
    }
    unset req.http.X-Front-Avif;
    unset req.http.X-Front-Webp;
    unset req.http.X-Front-Q;
}

# X-Front-Q holds the parameters of one Accept item (";q=0.8", or nothing);
# it becomes "yes" when the item's first q is above 0, else "no".
sub q_above_zero {
    if (req.http.X-Front-Q !~ "(?i);\s*q\s*=") {
        set req.http.X-Front-Q = "yes";
        return;
    }
    set req.http.X-Front-Q = regsub(req.http.X-Front-Q, "(?i)^.*?;\s*q\s*=\s*([^;\s]*).*$", "\1");
    if (req.http.X-Front-Q ~ "^([0-9]+\.?[0-9]*|\.[0-9]+)$" && req.http.X-Front-Q !~ "^0*\.?0*$") {
        set req.http.X-Front-Q = "yes";
    } else {
        set req.http.X-Front-Q = "no";
    }
}

# The other headers answers vary by, reduced to the values the service tells
# apart, so that a client cannot make the front hold a copy per value it
# invents (and slow every lookup of the URL with them). Sec-Fetch-Site: the
# service looks for "cross-site" alone (sites.py), the first header if sent
# twice. Origin: the service allows only the origins of server.cors_origins
# (web.py), which the front learns from AVATARPROXY_EDGE_CORS_ORIGINS (the same
# list, comma-separated); any other is dropped, as if the page sent none, and
# gets what a page without one gets (no Access-Control-Allow-Origin).
sub canonical_page {
    # (Kept as sent: the first of two headers counts, for Varnish as for the
    # service, and setting one could lose it to a request with too many.)
    if (req.http.Sec-Fetch-Site != "cross-site") {
        unset req.http.Sec-Fetch-Site;
    }
    if (req.http.Origin && !(req.http.Origin ~ "^[^,\s]+$" && std.strstr(
            "," + regsuball(std.getenv("AVATARPROXY_EDGE_CORS_ORIGINS"), "\s", "") + ",",
            "," + req.http.Origin + ","))) {
        unset req.http.Origin;
    }
}

sub vcl_hash {
    # The URL as sent, query included; not Host (the service ignores it). The
    # headers the answer depends on come from its Vary.
    hash_data(req.url);
    return (lookup);
}

sub vcl_backend_fetch {
    if (bereq.http.X-Front-Keep) {
        set bereq.backend = keep;
    } else {
        set bereq.backend = app;
    }
}

sub vcl_backend_response {
    if (bereq.uncacheable) {
        # A pass (not an avatar, or a rate-limited client's): as it comes.
        return (deliver);
    }
    if (bereq.http.X-Front-Keep && beresp.was_304) {
        call keep_copy;
        return (deliver);
    }
    if (beresp.status == 200 && beresp.http.X-Avatar-Source
            && beresp.http.Cache-Control ~ "^public"
            && beresp.http.Cache-Control !~ "(?i)no-store|no-cache|private") {
        # A photo or initials (or a 304 from the service, merged into the copy
        # it revalidated): the answer's max-age, at most edge.max_age_seconds.
        # Never served past it (no grace), so purges and blocks reach the front
        # within that bound; kept a while longer for If-None-Match and for
        # stale-if-error. (A TTL of 0 would hide the copy from both.)
        if (beresp.ttl > std.duration(std.getenv("AVATARPROXY_EDGE_MAX_AGE_SECONDS") + "s", 60s)) {
            set beresp.ttl = std.duration(std.getenv("AVATARPROXY_EDGE_MAX_AGE_SECONDS") + "s", 60s);
        }
        if (beresp.ttl < 0.001s) {
            set beresp.ttl = 0.001s;
        }
        set beresp.grace = 0s;
        set beresp.keep = std.duration(
            std.getenv("AVATARPROXY_EDGE_STALE_IF_ERROR_SECONDS") + "s", 86400s);
        set beresp.http.X-Front-Origin = std.real(time=now - beresp.age);
        set beresp.http.X-Front-Date = beresp.http.Date;
        set beresp.http.X-Front-Stale-At = std.real(time=now - beresp.age + beresp.ttl);
        unset beresp.http.X-Front-Kept;  # merged from a kept copy the service confirmed
        return (deliver);
    }
    if (bereq.http.If-None-Match && (beresp.status >= 500 || (beresp.status == 200
            && beresp.http.X-Avatar-Stand-In ~ "^(overload|deadline|error)$"))) {
        # The service's own trouble where the front holds a copy (Varnish asked
        # with If-None-Match because it does): keep the copy. Varnish cannot
        # serve a stale copy from here, but a 304 refreshes it: ask the front's
        # own keep socket, which answers 304 to anything. Requests waiting for
        # this fetch get the copy at once, rather than each asking the service
        # in turn.
        set bereq.http.X-Front-Keep = "1";
        return (retry);
    }
    if (bereq.http.If-None-Match && beresp.status == 200
            && beresp.http.Cache-Control ~ "(?i)no-store") {
        # Any other stand-in where the front holds a copy: a client over its
        # rate (X-Avatar-Stand-In: rate-limited). What one client gets must
        # neither keep the copy for everyone (a purged photo would stay while
        # that client keeps asking) nor replace it. Delivered, this answer
        # would replace it; so vcl_backend_error makes an empty one that does
        # not, and vcl_deliver asks the service again for this client alone.
        set bereq.http.X-Front-Again = "1";
        return (error(503));
    }
    # Not cacheable (a stand-in or an error with no copy to keep, a 4xx, a
    # private answer): to the client as it is. Any copy it replaces is dropped.
    # For 10 s requests for this variant go to the service in parallel
    # (hit-for-miss), not one after the other.
    set beresp.ttl = 10s;
    set beresp.grace = 0s;
    set beresp.keep = 0s;
    set beresp.uncacheable = true;
    return (deliver);
}

# The copy the front kept (vcl_backend_response, vcl_backend_error): served for
# 5 s, then in the background while the service is asked again, until
# AVATARPROXY_EDGE_STALE_IF_ERROR_SECONDS after it first went stale (its
# X-Front-Stale-At, which each keep carries over), and no longer. Browsers see
# its age since the service made it: Date and Age as the service's copy had them.
sub keep_copy {
    set beresp.ttl = std.time(beresp.http.X-Front-Stale-At, now) + std.duration(
        std.getenv("AVATARPROXY_EDGE_STALE_IF_ERROR_SECONDS") + "s", 86400s) - now;
    if (beresp.ttl > 5s) {
        set beresp.grace = beresp.ttl - 5s;
        set beresp.ttl = 5s;
    } else {
        set beresp.grace = 0s;
    }
    if (beresp.ttl < 0.001s) {
        # Its time is up: this once (the request that asked), then gone.
        set beresp.ttl = 0.001s;
    }
    set beresp.keep = 0s;
    set beresp.http.X-Front-Kept = "1";
    if (beresp.http.X-Front-Date) {
        set beresp.http.Date = beresp.http.X-Front-Date;
    }
    # The id the service gave the request that made the copy.
    unset beresp.http.X-Request-Id;
}

sub vcl_backend_error {
    if (bereq.http.X-Front-Again) {
        # A stand-in for one client (vcl_backend_response): an empty answer with
        # a TTL of 0, which replaces no copy; vcl_deliver restarts the request.
        set beresp.ttl = 0s;
        set beresp.grace = 0s;
        set beresp.keep = 0s;
        set beresp.http.X-Front-Again = "1";
        set beresp.http.Cache-Control = "no-store";
        return (deliver);
    }
    if (!bereq.uncacheable && bereq.http.If-None-Match && !bereq.http.X-Front-Keep) {
        # The service is down or did not answer in time: keep the copy, as above.
        # (Not for a pass: its If-None-Match is the client's, and the front
        # holds nothing for it.)
        set bereq.http.X-Front-Keep = "1";
        return (retry);
    }
    # No copy: a 503 (with requests waiting for it, for them only: Varnish
    # keeps it 1 s so they do not each wait for the service in turn).
    set beresp.grace = 0s;
    set beresp.keep = 0s;
    set beresp.http.Content-Type = "text/plain";
    set beresp.http.Cache-Control = "no-store";
    set beresp.http.X-Content-Type-Options = "nosniff";
    set beresp.body = "service unavailable" + {"
"};
    return (deliver);
}

sub vcl_synth {
    if (local.socket == "keep") {
        # Only the headers a 304 may carry: the kept copy keeps its own.
        unset resp.http.Server;
        unset resp.http.X-Varnish;
        unset resp.http.Retry-After;
        set resp.http.ETag = req.http.If-None-Match;
        return (deliver);
    }
    set resp.http.Content-Type = "text/plain";
    set resp.http.Cache-Control = "no-store";
    set resp.http.X-Content-Type-Options = "nosniff";
    set resp.body = resp.reason + {"
"};
    return (deliver);
}

sub vcl_deliver {
    if (resp.http.X-Front-Again && req.restarts == 0) {
        # A rate-limited client's stand-in (vcl_backend_error): ask again, as
        # a pass (vcl_recv).
        return (restart);
    }
    # No banner, as the service sends none.
    unset resp.http.Via;
    unset resp.http.X-Varnish;
    unset resp.http.Server;
    if (obj.uncacheable) {
        # A pass, or an answer for one client: why a stand-in is one
        # (models.StandIn) is the front's business.
        unset resp.http.X-Avatar-Stand-In;
    } elsif (resp.http.X-Front-Origin) {
        # A copy: the front's own headers stay with it.
        if (resp.http.X-Front-Kept) {
            # Its age since the service made it: Varnish counts from when
            # the front kept it (for other copies, the same moment).
            set resp.http.Age = std.integer(
                duration=now - std.time(resp.http.X-Front-Origin, now), fallback=0);
            unset resp.http.X-Front-Kept;
        }
        unset resp.http.X-Front-Origin;
        unset resp.http.X-Front-Stale-At;
        unset resp.http.X-Front-Date;
    }
    if (obj.hits > 0 || !resp.http.X-Request-Id) {
        # Not the service's answer to this request (a copy, or the front's own):
        # the id the service gave another request would lead to the wrong log
        # lines. The ingress' id, if any, and if the service would keep it
        # (ops.py: up to 64 of these characters).
        if (req.http.X-Request-Id && req.http.X-Request-Id ~ "^[A-Za-z0-9._:-]{1,64}$") {
            set resp.http.X-Request-Id = req.http.X-Request-Id;
        } else {
            unset resp.http.X-Request-Id;
        }
    }
}
