"""Client helpers for a running platform: accounts, going live, viewers, HTTP.

One of each, used by tests and benchmarks alike: `register`/`login`/`stream_key` over the REST
API, `push_rtmp` (an FFmpeg publisher sending testsrc2 + a tone over RTMP, as OBS would),
`connect` (a WebSocket viewer of a stream), `http` (a blocking request for set-up and probes)
and `Connection` (a keep-alive HTTP/1.1 client cheap enough for load generators).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import tornado.httpclient
import tornado.websocket

PASSWORD = "password123"


# --- blocking HTTP ----------------------------------------------------------------------------

def http(url: str, method: str = "GET", body: Any = None, token: str | None = None,
         timeout: float = 10.0, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """A blocking request for set-up and recovery probes; (599, b"") when it cannot connect."""
    request = urllib.request.Request(url, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, ValueError):
        return 599, b""


def call(base_url: str, method: str, path: str, body: Any = None, token: str | None = None,
         timeout: float = 15.0, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """`http` with a JSON answer: (status, decoded body or None)."""
    status, raw = http(base_url + path, method, body, token, timeout, context)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


# --- accounts ---------------------------------------------------------------------------------

def privacy_policy_version(base_url: str, *, context: ssl.SSLContext | None = None) -> str:
    """The version of the privacy policy the platform serves (registering accepts it)."""
    status, body = call(base_url, "GET", "/api/legal/privacy-policy", context=context)
    if status != 200:
        raise RuntimeError(f"privacy policy: {status} {body}")
    return str(body["version"])


def register(base_url: str, username: str, password: str = PASSWORD, email: str | None = None,
             *, context: ssl.SSLContext | None = None,
             accept_privacy_policy: str | None = None) -> dict[str, Any]:
    """Sign up (POST /api/auth/register), accepting the privacy policy the platform serves
    (or the version given); the answer: access and refresh token, the user."""
    version = accept_privacy_policy or privacy_policy_version(base_url, context=context)
    status, body = call(base_url, "POST", "/api/auth/register", {
        "username": username, "email": email or f"{username}@example.com",
        "password": password, "accept_privacy_policy": version}, context=context)
    if status != 201:
        raise RuntimeError(f"register {username}: {status} {body}")
    return body


def login(base_url: str, username: str, password: str = PASSWORD,
          *, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """Sign in by username (POST /api/auth/login); the answer: tokens and the user."""
    status, body = call(base_url, "POST", "/api/auth/login",
                        {"username": username, "password": password}, context=context)
    if status != 200:
        raise RuntimeError(f"login {username}: {status} {body}")
    return body


def stream_key(base_url: str, token: str, *, context: ssl.SSLContext | None = None) -> str:
    """The signed-in user's stream key (what OBS is given)."""
    status, body = call(base_url, "GET", "/api/stream/key", token=token, context=context)
    if status != 200:
        raise RuntimeError(f"stream key: {status} {body}")
    return str(body["stream_key"])


def live_stream_of(base_url: str, username: str,
                   *, context: ssl.SSLContext | None = None) -> dict[str, Any] | None:
    """The user's live stream as GET /api/users/<name>/streams lists it, or None."""
    status, body = call(base_url, "GET", f"/api/users/{username}/streams", context=context)
    if status != 200:
        raise RuntimeError(f"streams of {username}: {status} {body}")
    live = [stream for stream in body["data"] if stream["is_live"]]
    return live[0] if live else None


# --- going live: an RTMP publisher --------------------------------------------------------------

def publish_command(url: str, *, size: str = "640x360", rate: int = 24,
                    seconds: float | None = None, gop: int | None = None,
                    video_bitrate: str | None = None, audio_bitrate: str = "96k") -> list[str]:
    """FFmpeg sending lavfi testsrc2 + a 440 Hz tone as H.264/AAC in FLV to `url`, in real
    time (`-re`), as an encoder would; a GOP of one second unless `gop` (frames) says."""
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
               "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    if seconds is not None:
        command += ["-t", str(seconds)]
    command += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                "-g", str(gop or rate)]
    if video_bitrate:
        command += ["-b:v", video_bitrate]
    command += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", audio_bitrate, "-f", "flv", url]
    return command


def push_rtmp(url: str, *, stderr: Any = subprocess.DEVNULL,
              preexec_fn: Callable[[], Any] | None = None,
              **options: Any) -> subprocess.Popen[bytes]:
    """Start publishing to `url` (rtmp://host:port/live/<key>); options as `publish_command`."""
    return subprocess.Popen(publish_command(url, **options), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=preexec_fn)


# --- a WebSocket viewer -------------------------------------------------------------------------

class Viewer:
    """A WebSocket client of /ws/streams/<id>/viewers (or /live) that keeps every message it
    gets: `messages` as framed, `items` with batches unpacked, `frame_times` when each came."""

    def __init__(self, connection: tornado.websocket.WebSocketClientConnection) -> None:
        self.connection = connection
        self.messages: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self.raw: list[str | bytes] = []
        self.frame_times: list[float] = []
        self.closed = asyncio.Event()
        self._nonces = 0
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.connection.read_message()
            if message is None:
                self.closed.set()
                return
            self.frame_times.append(time.monotonic())
            self.raw.append(message)
            decoded = json.loads(message)
            self.messages.append(decoded)
            self.items.extend(decoded["items"] if decoded.get("type") == "batch" else [decoded])

    # --- chat (/live) ---

    def send_chat(self, text: str, nonce: str | None = None, **extra: Any) -> str:
        """Send a `chat.send`; its nonce (made up when not given)."""
        if nonce is None:
            self._nonces += 1
            nonce = f"n{self._nonces}"
        self.connection.write_message(json.dumps(
            {"type": "chat.send", "text": text, "nonce": nonce, **extra}))
        return nonce

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item.get("type") == kind]

    def chat(self) -> list[dict[str, Any]]:
        """The chat messages received live (not the history), in order."""
        return self.of_type("chat.message")

    def answer(self, nonce: str) -> dict[str, Any] | None:
        """The `chat.ack` or `chat.notice` for a nonce, once it came."""
        for item in self.items:
            if item.get("type") in ("chat.ack", "chat.notice") and item.get("nonce") == nonce:
                return item
        return None

    async def say(self, text: str, timeout: float = 10, **extra: Any) -> dict[str, Any]:
        """Send a message and wait for its ack or notice."""
        nonce = self.send_chat(text, **extra)
        await self.until(lambda v: v.answer(nonce) is not None, timeout, f"an answer to {text!r}")
        answer = self.answer(nonce)
        assert answer is not None
        return answer

    @property
    def cookie(self) -> str:
        headers = self.connection.headers
        header = headers.get("Set-Cookie", "") if headers is not None else ""
        return str(header).split(";")[0]

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    def viewers(self) -> int | None:
        counts = [m["viewers"] for m in self.messages if m["type"] == "viewers"]
        return counts[-1] if counts else None

    async def until(self, predicate: Any, timeout: float = 10, what: str = "a message") -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")
            await asyncio.sleep(0.05)

    async def until_closed(self, timeout: float = 10) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    def close(self) -> None:
        self.connection.close()


async def connect(base: str, stream_id: int, *, origin: str | None = None, cookie: str = "",
                  query: str = "", socket: str = "viewers") -> Viewer:
    """Open a viewer WebSocket on `base` (http://host:port) for the stream (`socket`:
    "viewers", or "live" for the watch page's socket with chat)."""
    url = base.replace("http://", "ws://") + f"/ws/streams/{stream_id}/{socket}{query}"
    headers = {"Origin": origin or base}
    if cookie:
        headers["Cookie"] = cookie
    request = tornado.httpclient.HTTPRequest(url, headers=headers, request_timeout=10)
    return Viewer(await tornado.websocket.websocket_connect(request))


async def connect_notifications(base: str, ticket: str | None, *,
                                origin: str | None = None) -> Viewer:
    """Open `/ws/notifications` on `base` (http://host:port) with a one-time ticket."""
    query = f"?ticket={ticket}" if ticket else ""
    url = base.replace("http://", "ws://") + f"/ws/notifications{query}"
    request = tornado.httpclient.HTTPRequest(url, headers={"Origin": origin or base},
                                             request_timeout=10)
    return Viewer(await tornado.websocket.websocket_connect(request))


# --- a keep-alive HTTP/1.1 client (a load generator must be cheaper than the server) ------------

class Connection:
    """One keep-alive connection; `request` reconnects when the previous one was dropped."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
            return status, data
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None
