"""Render conf/nginx/nginx.conf.template into var/nginx and run nginx with it."""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sf.config import PROJECT_ROOT, Config
from sf.media.process import die_with_parent
from sf.media.process import stop as stop_process

log = logging.getLogger("sf.nginx")

TEMPLATE = PROJECT_ROOT / "conf" / "nginx" / "nginx.conf.template"
EDGE_TEMPLATE = PROJECT_ROOT / "conf" / "nginx" / "edge.conf.template"
RTMP_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_rtmp_module.so",
    "/usr/share/nginx/modules/ngx_rtmp_module.so",
)
_PLACEHOLDER = re.compile(r"{{(\w+)}}")


# /hls/<id>/<file>: public streams. /hls/<id>/<expires>-<signature>/<file>: private streams,
# through a signed, expiring prefix (secure_link) that relative segment URIs inherit. A stream
# whose directory holds the `.private` marker is refused on the unsigned path.
HLS_LOCATIONS = r"""
        location ~ "^/hls/(?<sid>[0-9]{1,18})/(?<exp>[0-9]{1,12})-(?<sig>[A-Za-z0-9_-]{22})/(?<file>[A-Za-z0-9_][A-Za-z0-9_./-]{0,79}[A-Za-z0-9_])$" {
            secure_link $sig,$exp;
            secure_link_md5 "$exp/$sid {{internal_secret}}";
            if ($secure_link = "") { return 403; }
            if ($secure_link = "0") { return 410; }
            if ($file ~ "\.\.") { return 404; }
{{live_playlists_only}}
            alias {{hls_dir}}/$sid/$file;
            add_header X-Accel-Expires $sf_edge_cache_until always;
            add_header Cache-Control $hls_signed_cache_control always;
            add_header Access-Control-Allow-Origin * always;
            add_header X-Content-Type-Options nosniff always;
        }
        location ~ "^/hls/(?<sid>[0-9]{1,18})/(?<file>[A-Za-z0-9_][A-Za-z0-9_./-]{0,79}[A-Za-z0-9_])$" {
            if (-f {{hls_dir}}/$sid/.private) { return 404; }
            if ($file ~ "\.\.") { return 404; }
{{live_playlists_only}}
            alias {{hls_dir}}/$sid/$file;
            add_header X-Accel-Expires $sf_edge_cache_until always;
            add_header Cache-Control $hls_cache_control always;
            add_header Access-Control-Allow-Origin * always;
            add_header X-Content-Type-Options nosniff always;
        }
        location /hls/ { return 404; }
"""

# A node serves a stream's playlists only while it holds the current ones (the `.live` marker,
# sf/media/hls.py: set when its transcoder starts, removed when the stream goes live on another
# media node): a node the encoder has left for another answers 404 rather than a playlist that
# no longer advances, and the edge asks the next origin. Segments stay: their names are unique
# to a transcoder run.
LIVE_PLAYLISTS_ONLY = r"""            set $sf_stale "";
            if ($file ~ "\.m3u8$") { set $sf_stale "playlist"; }
            if (!-f {{hls_dir}}/$sid/.live) { set $sf_stale "${sf_stale}-off-air"; }
            if ($sf_stale = "playlist-off-air") { return 404; }"""


def edge_hls_location(signed: bool, playlist: bool) -> str:
    """One of the edge's four /hls/ locations: public or signed, playlist or segment.

    Signatures are checked here, before the cache, so an expired or foreign signature never
    reaches a cached answer; the key is the scope, the stream id and the file (never the host,
    the query or the signature itself), and the origin gets the same path without the query.
    Playlists are fetched once per half second; a new segment once however many ask
    (proxy_cache_lock).
    """
    prefix = r"(?<exp>[0-9]{1,12})-(?<sig>[A-Za-z0-9_-]{22})/" if signed else ""
    files = (r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,74}\.m3u8" if playlist
             else r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,79}[A-Za-z0-9_](?<!\.m3u8)")
    lines = [f'        location ~ "^/hls/(?<sid>[0-9]{{1,18}})/{prefix}(?<file>{files})$" {{']
    if signed:
        lines += ['            secure_link $sig,$exp;',
                  '            secure_link_md5 "$exp/$sid {{internal_secret}}";',
                  '            if ($secure_link = "") { return 403; }',
                  '            if ($secure_link = "0") { return 410; }']
    lines += ['            if ($file ~ "\\.\\.") { return 404; }',
              # Per client address: players ask a few times a second; a flood of made-up
              # names (every one a miss that reaches the origins) is refused here.
              "            limit_req zone=sf_hls_requests burst={{hls_request_burst}} nodelay;",
              "{{proxy_headers}}",
              '            proxy_set_header Connection "";',
              "            proxy_cache sf_hls;",
              f'            proxy_cache_key "{"signed" if signed else "public"}/$sid/$file'
              + ("@$sf_half_second" if playlist else "") + '";',
              # The origin's X-Accel-Expires (the end of the current second) bounds playlists
              # and public segments to at most 1 s, where proxy_cache_valid's 1 s means 1-2 s.
              "            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary"
              + (" X-Accel-Expires" if signed or playlist else "")
              + " X-Accel-Redirect X-Accel-Limit-Rate X-Accel-Buffering X-Accel-Charset;",
              "            proxy_hide_header Set-Cookie;",
              # Misses of one file are fetched once, however many ask (a waiter rechecks every
              # 500 ms). The timeout is long on purpose: under load a fetch slows down, and
              # waiters that gave up and went to the origin themselves would stampede it
              # (bench/hls.py at 2 GB/s: 2,986 origin requests per segment with 150 ms).
              "            proxy_cache_lock on;",
              "            proxy_cache_lock_timeout 5s;",
              "            proxy_cache_lock_age 5s;"]
    # A playlist's key names the half second it is asked in, so every edge fetches each
    # playlist twice a second and serves it at most ~0.5 s old whenever in the second the
    # transcoder writes it (nginx's cache counts whole seconds: a 1 s validity would serve it
    # up to 2 s old, bench/hls.py).
    # A public segment is asked again (If-Modified-Since: 304, no body) once it is a second old,
    # so a stream made private stops being served unsigned within a second even from the cache;
    # a signed one was checked above and stays.
    lines += ["            proxy_cache_valid 200 " + ("10m;" if signed and not playlist else "1s;"),
              # Others are served the stale copy while one request refreshes it; not in the
              # background: a refresh that finds 404 (ended, made private) must answer 404 itself.
              "            proxy_cache_use_stale updating;"]
    if not signed and not playlist:
        lines += ["            proxy_cache_revalidate on;"]
    lines += ["            proxy_next_upstream error timeout http_404 http_502 http_503;",
              "            proxy_connect_timeout 2s;",
              "            add_header X-Cache $upstream_cache_status always;",
              "            proxy_pass http://sf_media/hls/$sid/"
              + ("$exp-$sig/" if signed else "") + "$file;",
              "        }"]
    return "\n".join(lines)


EDGE_HLS_LOCATIONS = "\n".join(
    edge_hls_location(signed, playlist) for signed in (True, False) for playlist in (True, False)
) + "\n        location /hls/ { return 404; }\n"

# nginx's own error answers (edge and origin): the API's error shape and standing headers.
ERROR_HEADERS = """\
            types { }
            default_type "application/json; charset=utf-8";
            add_header X-Request-ID $request_id always;
            add_header Referrer-Policy no-referrer always;
            add_header X-Frame-Options DENY always;
            add_header Cache-Control no-store always;
            add_header API-Version 1 always;
            add_header X-Content-Type-Options nosniff always;
            add_header Content-Security-Policy "default-src 'none'; frame-ancestors 'none'" always;"""

# The web front (web/, see its README): pages at their public paths, their own scripts and
# styles under /static/, the npm libraries they use (installed by the set-up into
# web/node_modules, never a CDN) under /vendor/. Static files only: nothing here proxies. Every
# answer carries the pages' strict policy ({{web_headers}}: CSP without 'unsafe-inline', no
# framing, no referrer); a location with add_header of its own inherits none from the server,
# so HSTS is part of the snippet when TLS is on.
WEB_LOCATIONS = r"""
        location = / {
            root {{web_dir}};
            try_files /index.html =404;
{{web_headers}}
        }
        location ~ "^/watch/[0-9]{1,18}$" {
            root {{web_dir}};
            try_files /watch.html =404;
{{web_headers}}
        }
        location ~ "^/(?<web_page>login|dashboard)$" {
            root {{web_dir}};
            try_files /$web_page.html =404;
{{web_headers}}
        }
        # The pages the account mails link to (the token rides in the fragment, never sent).
        location ~ "^/account/(?:verify-email|reset-password|unsubscribe)$" {
            root {{web_dir}};
            try_files /account.html =404;
{{web_headers}}
        }
        # The service worker (Web Push notifications) at the root, so its scope is the whole
        # site; browsers fetch it past their HTTP cache when checking for an update.
        location = /sw.js {
            root {{web_dir}};
            try_files /sw.js =404;
{{web_headers}}
            add_header Service-Worker-Allowed / always;
        }
        location /static/ {
            root {{web_dir}};
{{web_headers}}
        }
        location /vendor/hls/ {
            alias {{web_dir}}/node_modules/hls.js/dist/;
{{web_headers}}
        }
        location /vendor/uplot/ {
            alias {{web_dir}}/node_modules/uplot/dist/;
{{web_headers}}
        }
"""
WEB_DIR = PROJECT_ROOT / "web"
# 'self' covers the same origin's ws:/wss: too (CSP level 3). media-src blob: is the
# MediaSource object URL hls.js plays from; its transmuxing worker is a file of its own
# (/vendor/hls/hls.worker.js), so workers need no blob:.
WEB_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; font-src 'self'; "
           "manifest-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
           "frame-ancestors 'none'")


def web_headers(config: Config) -> str:
    """The response headers of every web front location (pages, scripts, libraries)."""
    headers = [
        f'add_header Content-Security-Policy "{WEB_CSP}" always;',
        "add_header X-Content-Type-Options nosniff always;",
        "add_header X-Frame-Options DENY always;",
        "add_header Referrer-Policy no-referrer always;",
        'add_header Permissions-Policy "camera=(), microphone=(), geolocation=()" always;',
        'add_header Cache-Control "no-cache" always;',  # revalidated (ETag): updates show at once
        "charset utf-8;",
        "charset_types text/css application/javascript;",
    ]
    if config.tls_enabled:
        headers.append('add_header Strict-Transport-Security "max-age=31536000" always;')
    return "\n".join(f"            {line}" for line in headers)


# Ingest: OBS publishes rtmp://host:port/live/<stream key>; on_publish renames the stream to its
# id (3xx + Location), so the key never reaches a path, a playlist or a log.
RTMP_BLOCK = r"""
rtmp {
    access_log off;
    server {
        listen {{rtmp_host}}:{{rtmp_port}};
        chunk_size 4096;
        # Socket timeout, handshake included (default 60 s): a slow-handshake flood must not
        # hold the worker's connections long; live publishers and pulls send constantly and
        # `ping` keeps a quiet one busy.
        timeout 15s;
        ping 10s;
        ping_timeout 10s;
        max_message 8M;

        application live {
            live on;
            record off;
            meta copy;
            wait_key on;
            interleave on;
            idle_streams off;
            drop_idle_publisher 10s;
            sync 100ms;
            allow publish all;
            allow play 127.0.0.1;
            deny play all;
            notify_method post;
            notify_update_timeout 10s;
            on_publish {{ingest_url}}/internal/rtmp/on_publish?secret={{internal_secret}};
            on_publish_done {{ingest_url}}/internal/rtmp/on_publish_done?secret={{internal_secret}};
            on_update {{ingest_url}}/internal/rtmp/on_update?secret={{internal_secret}};
        }
    }
}
"""

# nginx-rtmp's control module (drop a publisher): loopback, or an internal network in a
# multi-node deployment (where every peer on that network reaches it); never proxied by the
# public server. Only the API nodes may use it: they send the internal secret in X-SF-Control
# (sf/ingest.py), anyone else gets 403. Only `drop` is enabled (recording is not used).
# /stat is nginx-rtmp's statistics (publishers, clients, bandwidth), read by the node's API
# ingest process at each Prometheus scrape (sf/media/rtmp_stat.py), behind the same secret.
CONTROL_SERVER = r"""
    server {
        listen {{media_control_host}}:{{media_control_port}};
        access_log off;
        location /control/ {
            if ($http_x_sf_control != "{{internal_secret}}") { return 403; }
            rtmp_control drop;
        }
        location = /stat {
            if ($http_x_sf_control != "{{internal_secret}}") { return 403; }
            rtmp_stat all;
        }
        location / { return 404; }
    }
"""

# What the API learns about the client, set (never appended to, never passed through) on every
# proxied location. A location that has any proxy_set_header of its own inherits none from the
# server level, which is how the client's own X-Forwarded-For, X-Request-ID and X-Forwarded-Proto
# once reached the API: so each location that proxies carries this whole snippet, and render()
# refuses a proxy_pass whose block lacks it. X-Forwarded-For is $remote_addr, not
# $proxy_add_x_forwarded_for (which appends to what the client sent): nginx is the edge.
PROXY_HEADERS = """\
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header Forwarded "";"""
PROXY_HEADER_LINES = tuple(line.strip() for line in PROXY_HEADERS.splitlines())

# Concurrent requests per client address (see the template's comment for the reasoning).
LIMIT_CONN_HTTP = 100
LIMIT_CONN_WS = 500
# WebSocket handshakes per client address at the edge: a sustained 10 a second with bursts of
# 40 (a page of tabs reopening after a network change) pass; a flood is refused with 429.
WS_HANDSHAKES_PER_SECOND = 10
WS_HANDSHAKE_BURST = 40
# HLS requests per client address at the edge: a player makes about two a second, a household
# or an office behind one NAT a few dozen; a cache-busting flood (security.md#hls-cache-busting-flood: 18,700/s of
# made-up segment names from one address, each a miss at every origin) is refused with 429.
HLS_REQUESTS_PER_SECOND = 200
HLS_REQUEST_BURST = 400
NOFILE_CAP = 65536
# The internal secret is written into quoted nginx strings (secure_link_md5, the control check)
# and callback URLs: nothing there may end a string, start a variable or need escaping.
_SAFE_SECRET = re.compile(r"[A-Za-z0-9._~+/=-]+")


def worker_user_directive(config: Config) -> str:
    """As root, workers run as www-data when it can reach the media dir and web/, else as root.

    (A project checked out under a 0700 home directory is unreadable to www-data; a dedicated
    deployment gives the media dir to the nginx user instead, see docker/.)
    """
    if os.geteuid() != 0:
        return ""
    for parent in [config.media_dir, *config.media_dir.parents, WEB_DIR, *WEB_DIR.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            log.warning("%s is not traversable by www-data: nginx workers run as root", parent)
            return "user root;"
    return "user www-data;"


def nginx_dir(config: Config) -> Path:
    return config.var_dir / "nginx"


def edge_dir(config: Config) -> Path:
    return config.var_dir / "edge"


def file_limits() -> tuple[int, int]:
    """(worker_rlimit_nofile, worker_connections) within this process's hard open-file limit.

    nginx inherits the limit from us; unprivileged it cannot go past the hard limit. Each
    connection costs a descriptor and a request sending a file one more, so connections get a
    little under half of the descriptors.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = NOFILE_CAP if hard == resource.RLIM_INFINITY else min(hard, NOFILE_CAP)
    return nofile, max(256, (nofile - 200) // 2)


def _enclosing_block(text: str, index: int) -> str:
    """The text of the innermost `{ ... }` block around `index` (no braces in its strings)."""
    start, depth = index, 0
    while start > 0:
        start -= 1
        if text[start] == "}":
            depth += 1
        elif text[start] == "{":
            if depth == 0:
                break
            depth -= 1
    end, depth = index, 0
    while end < len(text):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            if depth == 0:
                break
            depth -= 1
        end += 1
    line_start = text.rfind("\n", 0, start) + 1
    return text[line_start:end + 1]


def unprotected_proxies(text: str) -> list[str]:
    """The blocks of a rendered config that proxy without setting the client identity headers."""
    blocks = [_enclosing_block(text, m.start())
              for m in re.finditer(r"^\s*proxy_pass\s", text, re.MULTILINE)]
    return [block.splitlines()[0].strip() for block in blocks
            if not all(line in block for line in PROXY_HEADER_LINES)]


LOOPBACK = ("127.0.0.1/32", "::1/128")


def real_ip_lines(proxies: tuple[object, ...]) -> str:
    """Believe X-Forwarded-For from exactly these proxies (nothing when there are none)."""
    lines = "".join(f"    set_real_ip_from {network};\n" for network in proxies)
    return lines + ("    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;"
                    if proxies else "")


# An upstream needs a server: while none of its names resolves (`Edge`), one that is down, so
# requests get the edge's own 502 in the API's shape until the next lookup finds one.
NO_SERVER = "127.0.0.1:1 down"


def upstream_servers(servers: tuple[str, ...], parameters: str) -> str:
    if not servers:
        return f"        server {NO_SERVER};"
    return "\n".join(f"        server {server} {parameters};" for server in servers)


# The address access logs write when SF_LOG_IP_MODE is not `raw`: the /24 of an IPv4 client,
# the first three groups (/48) of an IPv6 one (nginx has no keyed hash, so `hash` writes this
# too). An IPv6 address compressed (`::`) within its first three groups keeps what precedes
# the `::`, never more than three groups.
LOG_ADDRESS_MAP = r"""    map $remote_addr $sf_log_address {
        "~^(?<sf_log_v4>[0-9]+\.[0-9]+\.[0-9]+)\.[0-9]+$" "${sf_log_v4}.0/24";
        "~^(?<sf_log_v6>[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f]*)" "${sf_log_v6}::/48";
        default "-";
    }"""


def log_address(config: Config) -> str:
    """The access log's client address variable for SF_LOG_IP_MODE."""
    return "$remote_addr" if config.log_ip_mode == "raw" else "$sf_log_address"


def template_values(config: Config, origin: bool = True) -> dict[str, str]:
    """The values of every {{placeholder}} of the node template (`origin`) or the edge's."""
    module = next((path for path in RTMP_MODULE_CANDIDATES if os.path.exists(path)), "")
    if not _SAFE_SECRET.fullmatch(config.internal_secret):
        raise ValueError("SF_INTERNAL_SECRET may hold only letters, digits and ._~+/=- "
                         "(it is written into the nginx configuration)")
    nofile, connections = file_limits()
    return {
        "nginx_dir": str(nginx_dir(config)),
        "log_dir": str(config.var_dir / "log"),
        "media_dir": str(config.media_dir),
        "user_directive": worker_user_directive(config),
        "rtmp_module": f"load_module {module};" if module else "",
        "client_max_body_size": str(config.max_request_bytes),
        "api_host": config.api_host,
        "api_port": str(config.api_port),
        "ingest_url": config.ingest_url,
        "http_host": config.http_host,
        "http_port": str(config.http_port),
        "listen_ssl": " ssl" if config.tls_enabled else "",
        "ssl_lines": (f"        ssl_certificate {config.tls_cert};\n"
                      f"        ssl_certificate_key {config.tls_key};\n"
                      "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                      "        add_header Strict-Transport-Security \"max-age=31536000\" always;")
        if config.tls_enabled else "",
        "hls_locations": HLS_LOCATIONS if origin else EDGE_HLS_LOCATIONS,
        "live_playlists_only": LIVE_PLAYLISTS_ONLY,
        "error_headers": ERROR_HEADERS,
        "media_http_port": str(config.media_http_port),
        "edge_dir": str(edge_dir(config)),
        "edge_workers": str(config.edge_workers or "auto"),
        "edge_worker_connections": str(max(256, nofile * 3 // 4)),
        # API servers are never marked down: a refused connection (a process restarting) moves
        # the request to the next one at once, and with one view per server there is no window
        # in which every server is "down" while one is back (rolling restarts: 0 failures).
        "api_servers": upstream_servers(config.edge_api_servers, "max_fails=0"),
        "media_servers": upstream_servers(config.edge_media_origins,
                                          "max_fails=1 fail_timeout=10s"),
        "hls_cache_max_size": "1g",
        "ws_handshakes_per_second": str(WS_HANDSHAKES_PER_SECOND),
        "ws_handshake_burst": str(WS_HANDSHAKE_BURST),
        "hls_requests_per_second": str(HLS_REQUESTS_PER_SECOND),
        "hls_request_burst": str(HLS_REQUEST_BURST),
        "web_locations": WEB_LOCATIONS,
        "web_dir": str(WEB_DIR),
        "web_headers": web_headers(config),
        "rtmp_block": RTMP_BLOCK,
        "control_server": CONTROL_SERVER,
        "rtmp_host": config.http_host,
        "rtmp_port": str(config.rtmp_port),
        "media_control_port": str(config.media_control_port),
        "media_control_host": config.media_control_host,
        "hls_dir": str(config.media_dir / "hls"),
        "internal_secret": config.internal_secret,
        "hls_segment_max_age": "86400",
        "real_ip_lines": real_ip_lines(
            (*LOOPBACK, *config.real_ip_from) if origin else config.real_ip_from),
        "worker_rlimit_nofile": str(nofile),
        "worker_connections": str(connections),
        "limit_conn_http": str(LIMIT_CONN_HTTP),
        "limit_conn_ws": str(LIMIT_CONN_WS),
        "proxy_headers": PROXY_HEADERS,
        "log_address_map": LOG_ADDRESS_MAP,
        "log_address": log_address(config),
    }


def render(config: Config, extra: dict[str, str] | None = None) -> Path:
    """Write var/nginx/nginx.conf (the node: RTMP, its files, control); unknown or unfilled
    placeholders are an error."""
    return _render(config, TEMPLATE, nginx_dir(config), template_values(config), extra)


def render_edge(config: Config, extra: dict[str, str] | None = None) -> Path:
    """Write var/edge/nginx.conf: the public HTTP edge in front of API processes and media nodes."""
    return _render(config, EDGE_TEMPLATE, edge_dir(config),
                   template_values(config, origin=False), extra)


def _render(config: Config, template: Path, directory: Path, values: dict[str, str],
            extra: dict[str, str] | None) -> Path:
    config.media_dir.mkdir(parents=True, exist_ok=True)
    values.update(extra or {})
    text = template.read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise ValueError(f"nginx template placeholders without values: {', '.join(missing)}")
    # The media snippets hold placeholders of their own: expand until none is left.
    rendered = text
    for _ in range(3):
        rendered = _PLACEHOLDER.sub(lambda match: values[match.group(1)], rendered)
    leftover = _PLACEHOLDER.findall(rendered)
    if leftover:
        raise ValueError(f"nginx template placeholders without values: {', '.join(leftover)}")
    unprotected = unprotected_proxies(rendered)
    if unprotected:
        raise ValueError("nginx locations proxy without the PROXY_HEADERS snippet: "
                         + "; ".join(unprotected))
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (config.var_dir / "log").mkdir(parents=True, exist_ok=True)
    config.media_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.media_dir, 0o755)
    (config.media_dir / "hls").mkdir(parents=True, exist_ok=True)
    (config.media_dir / "thumbnails").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and "user www-data;" in rendered:
        # The workers write the edge's cache and temporary files.
        for path in [directory / "tmp", directory / "cache", *(directory / "tmp").iterdir()]:
            shutil.chown(path, "www-data")
    path = directory / "nginx.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the callback secret
    with os.fdopen(fd, "w") as handle:
        handle.write(rendered)
    return path


def nginx_command(config: Config, conf: Path) -> list[str]:
    binary = shutil.which(config.nginx) or config.nginx
    return [binary, "-p", str(conf.parent), "-c", str(conf),
            "-e", str(config.var_dir / "log" / f"{_log_prefix(conf)}-error.log")]


def _log_prefix(conf: Path) -> str:
    return "edge" if conf.parent.name == "edge" else "nginx"


def check(config: Config, conf: Path) -> None:
    result = subprocess.run([*nginx_command(config, conf), "-t", "-q"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nginx configuration is invalid: {result.stderr.strip()}")


def start(config: Config, conf: Path) -> subprocess.Popen[bytes]:
    """Run nginx with `conf` in the foreground as our child; it dies with us."""
    check(config, conf)
    process = subprocess.Popen([*nginx_command(config, conf), "-g", "daemon off;"],
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    time.sleep(0.2)
    if process.poll() is not None:
        log_file = config.var_dir / "log" / f"{_log_prefix(conf)}-error.log"
        raise RuntimeError(f"nginx exited at start (see {log_file})")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, signal.SIGQUIT, timeout=10)  # graceful: finish in-flight requests


def resolve_endpoints(endpoints: tuple[str, ...],
                      lookup: Callable[[str, int], list[str]] | None = None
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every address:port behind these host:port names, sorted; the names that resolve to
    nothing now). nginx would look the names up once, at start; `Edge` does it again and again."""
    lookup = lookup or _lookup
    found: set[str] = set()
    missing = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        try:
            addresses = lookup(host.strip("[]"), int(port))
        except OSError:
            addresses = []
        if not addresses:
            missing.append(endpoint)
        found.update(f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
                     for address in addresses)
    return tuple(sorted(found)), tuple(missing)


def _lookup(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class Edge:
    """The public edge nginx on its own (`sf edge`, a gateway machine or container).

    The names in SF_EDGE_API_SERVERS and SF_EDGE_MEDIA_ORIGINS are looked up here rather than
    by nginx (which would resolve them once, at start, and fail to start while one is
    unknown): the edge starts with the addresses found, and `refresh()` reloads it when they
    change: a replica added behind a compose service name, a media pod restarted under its
    stable name with a new address. A reload ends the old workers' WebSockets after
    worker_shutdown_timeout (clients reconnect), so it happens only on a change.
    """

    def __init__(self, config: Config,
                 lookup: Callable[[str, int], list[str]] | None = None) -> None:
        self.config = config
        self.lookup = lookup
        self.process: subprocess.Popen[bytes] | None = None
        self.upstreams: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.missing: tuple[str, ...] = ()

    def resolve(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        api, api_missing = resolve_endpoints(self.config.edge_api_servers, self.lookup)
        media, media_missing = resolve_endpoints(self.config.edge_media_origins, self.lookup)
        missing = api_missing + media_missing
        if missing != self.missing:
            if missing:
                log.warning("edge upstreams not resolvable now (left out): %s", ", ".join(missing))
            self.missing = missing
        return api, media

    def render(self) -> Path:
        api, media = self.upstreams
        return render_edge(self.config.replace(edge_api_servers=api, edge_media_origins=media))

    def start(self) -> Edge:
        self.upstreams = self.resolve()
        self.process = start(self.config, self.render())
        log.info("edge upstreams: API %s; media %s", ", ".join(self.upstreams[0]) or "none",
                 ", ".join(self.upstreams[1]) or "none")
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def refresh(self) -> bool:
        """Look the names up again; reload nginx if their addresses changed (True then)."""
        upstreams = self.resolve()
        if upstreams == self.upstreams or self.process is None:
            return False
        self.upstreams = upstreams
        try:
            check(self.config, self.render())
        except RuntimeError:
            log.exception("edge configuration with upstreams %s refused; the running one stays",
                          upstreams)
            return False
        log.info("edge upstreams changed, reloading: API %s; media %s",
                 ", ".join(upstreams[0]) or "none", ", ".join(upstreams[1]) or "none")
        self.process.send_signal(signal.SIGHUP)
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port."""
    address = "127.0.0.1" if host in ("0.0.0.0", "", "*") else "::1" if host == "::" else host
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class Front:
    """The node's two nginx: the media node's own (RTMP, its files) and the public edge."""

    def __init__(self, config: Config, edge: bool = True) -> None:
        self.config = config
        self.processes: list[subprocess.Popen[bytes]] = []
        self.edge = edge

    def start(self) -> Front:
        if self.edge and _listening(self.config.http_host, self.config.http_port):
            # With `reuseport` a second nginx would bind the port beside the one there (an
            # orphaned worker of a killed edge, say) and the kernel would split clients between them.
            raise RuntimeError(f"port {self.config.http_port} is taken (SF_HTTP_PORT)")
        try:
            self.processes.append(start(self.config, render(self.config)))
            if self.edge:
                self.processes.append(start(self.config, render_edge(self.config)))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """The edge first (no new requests), then the node."""
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()
