"""Render conf/nginx/nginx.conf.template into var/nginx and run nginx with it."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from sf.config import PROJECT_ROOT, Config

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
        "user_directive": "user www-data;" if os.geteuid() == 0 else "",
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
        "hls_locations": "",
        "rtmp_block": "",
    }


def render(config: Config, extra: dict[str, str] | None = None) -> Path:
    """Write var/nginx/nginx.conf; unknown or unfilled placeholders are an error."""
    values = template_values(config)
    values.update(extra or {})
    text = TEMPLATE.read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise ValueError(f"nginx template placeholders without values: {', '.join(missing)}")
    rendered = _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
    directory = nginx_dir(config)
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (config.var_dir / "log").mkdir(parents=True, exist_ok=True)
    config.media_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.media_dir, 0o755)
    path = directory / "nginx.conf"
    path.write_text(rendered)
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
