"""Render conf/nginx/nginx.conf.template into var/nginx and run nginx with it."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from sf.config import PROJECT_ROOT, Config

log = logging.getLogger("sf.nginx")

TEMPLATE = PROJECT_ROOT / "conf" / "nginx" / "nginx.conf.template"
RTMP_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_rtmp_module.so",
    "/usr/share/nginx/modules/ngx_rtmp_module.so",
)
_PLACEHOLDER = re.compile(r"{{(\w+)}}")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the process that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# /hls/<id>/<file>: public streams. /hls/<id>/<expires>-<signature>/<file>: private streams,
# through a signed, expiring prefix (secure_link) that relative segment URIs inherit. A stream
# whose directory holds the `.private` marker is refused on the unsigned path.
HLS_LOCATIONS = r"""
        location ~ "^/hls/(?<sid>[0-9]{1,18})/(?<exp>[0-9]{1,12})-(?<sig>[A-Za-z0-9_-]{22})/(?<file>[A-Za-z0-9_][A-Za-z0-9_./-]{0,80})$" {
            secure_link $sig,$exp;
            secure_link_md5 "$exp/$sid {{internal_secret}}";
            if ($secure_link = "") { return 403; }
            if ($secure_link = "0") { return 410; }
            if ($file ~ "\.\.") { return 404; }
            alias {{hls_dir}}/$sid/$file;
            add_header Cache-Control $hls_cache_control always;
            add_header Access-Control-Allow-Origin * always;
            add_header X-Content-Type-Options nosniff always;
        }
        location ~ "^/hls/(?<sid>[0-9]{1,18})/(?<file>[A-Za-z0-9_][A-Za-z0-9_./-]{0,80})$" {
            if (-f {{hls_dir}}/$sid/.private) { return 404; }
            if ($file ~ "\.\.") { return 404; }
            alias {{hls_dir}}/$sid/$file;
            add_header Cache-Control $hls_cache_control always;
            add_header Access-Control-Allow-Origin * always;
            add_header X-Content-Type-Options nosniff always;
        }
        location /hls/ { return 404; }
"""

# Ingest: OBS publishes rtmp://host:port/live/<stream key>; on_publish renames the stream to its
# id (3xx + Location), so the key never reaches a path, a playlist or a log.
RTMP_BLOCK = r"""
rtmp {
    access_log off;
    server {
        listen {{rtmp_host}}:{{rtmp_port}};
        chunk_size 4096;
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
            on_publish http://{{api_host}}:{{api_port}}/internal/rtmp/on_publish?secret={{internal_secret}};
            on_publish_done http://{{api_host}}:{{api_port}}/internal/rtmp/on_publish_done?secret={{internal_secret}};
            on_update http://{{api_host}}:{{api_port}}/internal/rtmp/on_update?secret={{internal_secret}};
        }
    }
}
"""

# nginx-rtmp's control module (drop a publisher): loopback, or an internal network in a
# multi-node deployment; never proxied by the public server.
CONTROL_SERVER = r"""
    server {
        listen {{media_control_host}}:{{media_control_port}};
        access_log off;
        location /control { rtmp_control all; }
        location / { return 404; }
    }
"""


def worker_user_directive(config: Config) -> str:
    """As root, workers run as www-data when it can reach the media dir, else as root.

    (A project checked out under a 0700 home directory is unreadable to www-data; a dedicated
    deployment gives the media dir to the nginx user instead, see docker/.)
    """
    if os.geteuid() != 0:
        return ""
    for parent in [config.media_dir, *config.media_dir.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            log.warning("%s is not traversable by www-data: nginx workers run as root", parent)
            return "user root;"
    return "user www-data;"


def nginx_dir(config: Config) -> Path:
    return config.var_dir / "nginx"


def template_values(config: Config) -> dict[str, str]:
    """The values of every {{placeholder}} of the template (media parts are added by later code)."""
    from sf.app import max_request_bytes

    module = next((path for path in RTMP_MODULE_CANDIDATES if os.path.exists(path)), "")
    return {
        "nginx_dir": str(nginx_dir(config)),
        "log_dir": str(config.var_dir / "log"),
        "media_dir": str(config.media_dir),
        "user_directive": worker_user_directive(config),
        "rtmp_module": f"load_module {module};" if module else "",
        "client_max_body_size": str(max_request_bytes(config)),
        "api_host": config.api_host,
        "api_port": str(config.api_port),
        "http_host": config.http_host,
        "http_port": str(config.http_port),
        "listen_ssl": " ssl" if config.tls_enabled else "",
        "ssl_lines": (f"        ssl_certificate {config.tls_cert};\n"
                      f"        ssl_certificate_key {config.tls_key};\n"
                      "        ssl_protocols TLSv1.2 TLSv1.3;\n"
                      "        add_header Strict-Transport-Security \"max-age=31536000\" always;")
        if config.tls_enabled else "",
        "hls_locations": HLS_LOCATIONS,
        "rtmp_block": RTMP_BLOCK,
        "control_server": CONTROL_SERVER,
        "rtmp_host": config.http_host,
        "rtmp_port": str(config.rtmp_port),
        "media_control_port": str(config.media_control_port),
        "media_control_host": config.media_control_host,
        "hls_dir": str(config.media_dir / "hls"),
        "internal_secret": config.internal_secret,
        "hls_segment_max_age": "86400",
    }


def render(config: Config, extra: dict[str, str] | None = None) -> Path:
    """Write var/nginx/nginx.conf; unknown or unfilled placeholders are an error."""
    config.media_dir.mkdir(parents=True, exist_ok=True)
    values = template_values(config)
    values.update(extra or {})
    text = TEMPLATE.read_text()
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
    directory = nginx_dir(config)
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (config.var_dir / "log").mkdir(parents=True, exist_ok=True)
    config.media_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.media_dir, 0o755)
    (config.media_dir / "hls").mkdir(parents=True, exist_ok=True)
    (config.media_dir / "thumbnails").mkdir(parents=True, exist_ok=True)
    path = directory / "nginx.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the callback secret
    with os.fdopen(fd, "w") as handle:
        handle.write(rendered)
    return path


def nginx_command(config: Config, conf: Path) -> list[str]:
    binary = shutil.which(config.nginx) or config.nginx
    return [binary, "-p", str(nginx_dir(config)), "-c", str(conf),
            "-e", str(config.var_dir / "log" / "nginx-error.log")]


def check(config: Config, conf: Path) -> None:
    result = subprocess.run([*nginx_command(config, conf), "-t", "-q"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nginx configuration is invalid: {result.stderr.strip()}")


def start(config: Config, conf: Path) -> subprocess.Popen[bytes]:
    """Run nginx in the foreground as our child; it dies with us."""
    check(config, conf)
    process = subprocess.Popen([*nginx_command(config, conf), "-g", "daemon off;"],
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    time.sleep(0.2)
    if process.poll() is not None:
        raise RuntimeError(f"nginx exited at start (see {config.var_dir / 'log' / 'nginx-error.log'})")
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)  # graceful: finish in-flight requests
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
