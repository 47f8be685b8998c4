# The addresses avatarproxy.vcl sends requests to (tests/front.py moves them
# to free ones on loopback).

# The service in this pod: server.port of config.toml (8081), on loopback.
# It answers within server.request_deadline_seconds (3 s) with stand-in
# initials at worst; a longer silence is a failure (stale if error).
backend app {
    .host = "127.0.0.1";
    .port = "8081";
    .connect_timeout = 1s;
    .first_byte_timeout = 10s;
    .between_bytes_timeout = 5s;
}

# The front's own "keep" socket (varnishd -a keep=..., deployment.yaml).
backend keep {
    .path = "/var/lib/varnish/keep.sock";
}
