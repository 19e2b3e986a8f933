"""Profiles: read, partial update, avatar upload, password change, public users."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import uuid
import zlib

import pytest
from PIL import Image

from harness.smtp import token_of

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def config(base_config):
    """External avatar URLs may come from cdn.example.com (SF_AVATAR_HOSTS)."""
    return base_config.replace(avatar_hosts=("cdn.example.com",))


def image_bytes(fmt: str, size=(800, 600), exif: bool = False) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    kwargs = {}
    if exif:
        data = Image.Exif()
        data[0x010F] = "SecretCameraMaker"  # Make
        data[0x0110] = "Model-GPS-Leak"    # Model
        kwargs["exif"] = data.tobytes()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_profile_requires_auth(api):
    response = await api.get("/api/users/profile")
    assert response.status == 401
    assert response.json == {"error": {"code": "unauthorized",
                                       "message": "Authentication required"}}


async def test_partial_profile_update(api, mailbox):
    tokens = await api.register("alice")
    token = tokens["access_token"]
    response = await api.put("/api/users/profile", {"bio": "I stream chess"}, token=token)
    assert response.status == 200
    assert response.json["bio"] == "I stream chess"
    assert response.json["email"] == "alice@example.com"
    response = await api.put("/api/users/profile", {"email": "new@example.com",
                                                    "current_password": "password123"}, token=token)
    assert response.json["bio"] == "I stream chess" and response.json["email"] == "alice@example.com"
    assert response.json["pending_email"] == "new@example.com"  # until verified
    verified = await api.post("/api/auth/verify-email", {
        "token": token_of(await mailbox.wait_for("new@example.com"))})
    assert verified.status == 204
    response = await api.get("/api/users/profile", token=token)
    assert response.json["email"] == "new@example.com" and response.json["email_verified"]
    response = await api.put("/api/users/profile", {"avatar": "https://cdn.example.com/a.png"},
                             token=token)
    assert response.json["avatar"] == "https://cdn.example.com/a.png"
    response = await api.put("/api/users/profile", {"avatar": None}, token=token)
    assert response.status == 200 and response.json["avatar"] is None
    assert response.json["updated_at"] >= tokens["user"]["updated_at"]


@pytest.mark.parametrize("body,field", [
    ({"email": "nope"}, "email"),
    ({"bio": "x" * 1001}, "bio"),
    ({"bio": "bell\x07"}, "bio"),
    ({"avatar": "javascript:alert(1)"}, "avatar"),
    ({"avatar": "ftp://host/a.png"}, "avatar"),
    ({"username": "rename"}, "username"),
    ({"followers_count": 10**6}, "followers_count"),
])
async def test_profile_update_rejects_bad_fields(api, body, field):
    token = (await api.register("bob"))["access_token"]
    response = await api.put("/api/users/profile", body, token=token)
    assert response.status == 422
    assert field in response.json["error"]["fields"]
    profile = await api.get("/api/users/profile", token=token)
    assert profile.json["bio"] == "" and profile.json["followers_count"] == 0


async def test_email_change_to_taken_email_waits_like_any_other(api):
    """security.md#address-change-oracle: whether the address is taken is told only to its
    mailbox (the link answers 409), not to whoever asks for the change."""
    await api.register("carol")
    token = (await api.register("dave"))["access_token"]
    response = await api.put("/api/users/profile", {"email": "CAROL@example.com",
                                                    "current_password": "password123"}, token=token)
    assert response.status == 200 and response.json["email"] == "dave@example.com"
    assert response.json["pending_email"] == "CAROL@example.com"


async def test_script_in_bio_is_never_reflected_as_markup(api):
    token = (await api.register("eve"))["access_token"]
    payload = "</script><script>alert(1)</script><img src=x onerror=alert(1)>"
    response = await api.put("/api/users/profile", {"bio": payload}, token=token)
    assert response.status == 200
    assert response.json["bio"] == payload  # stored verbatim, it is data
    public = await api.get("/api/users/eve")
    for raw in (response.body, public.body):
        assert b"</script>" not in raw  # json encoding escapes "</"
    assert public.headers["Content-Type"].startswith("application/json")
    assert public.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in public.headers["Content-Security-Policy"]


async def test_public_user(api):
    await api.register("Frank")
    response = await api.get("/api/users/frank")
    assert response.status == 200
    assert set(response.json) == {"id", "username", "avatar", "bio", "followers_count",
                                  "created_at", "is_live"}
    assert response.json["username"] == "Frank"
    assert (await api.get("/api/users/nobody_here")).status == 404
    assert (await api.get("/api/users/bad-name!")).status == 404


async def test_public_user_cache_is_invalidated_by_profile_update(api):
    token = (await api.register("gina"))["access_token"]
    assert (await api.get("/api/users/gina")).json["bio"] == ""
    await api.put("/api/users/profile", {"bio": "updated"}, token=token)
    assert (await api.get("/api/users/gina")).json["bio"] == "updated"


@pytest.mark.parametrize("fmt,content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                              ("WEBP", "image/webp")])
async def test_avatar_upload_is_reencoded_resized_and_stripped(api, services, fmt, content_type):
    token = (await api.register("hank"))["access_token"]
    data = image_bytes(fmt, exif=(fmt == "JPEG"))
    response = await api.put("/api/users/profile/avatar", token=token, body=data,
                             headers={"Content-Type": content_type})
    assert response.status == 200, response
    url = response.json["avatar"]
    assert url.startswith("/media/avatars/") and url.endswith(".webp")
    stored = services.config.media_dir / url.removeprefix("/media/")
    with Image.open(stored) as image:
        assert image.format == "WEBP"
        assert max(image.size) == services.config.avatar_size
        assert image.size == (256, 192)  # aspect ratio kept
        assert not image.getexif()
    assert b"SecretCameraMaker" not in stored.read_bytes()
    # nginx serves the file (tests/test_gateway.py); the API has no file routes at all.
    assert (await api.get(url)).status == 404


async def test_the_api_serves_no_media_files_by_any_path(api, services):
    """security.md#raw-path-traversal: the API had its own /media route (a StaticFileHandler over
    the media dir) that followed `..` into hls/, private streams included; nginx forwarded
    such raw paths to it. Files are nginx's alone now."""
    hls = services.config.media_dir / "hls" / "424242"
    hls.mkdir(parents=True, exist_ok=True)
    (hls / "master.m3u8").write_bytes(b"#EXTM3U private")
    (hls / ".private").touch()
    for path in ("/media/thumbnails/../../api/x#/../../media/hls/424242/master.m3u8",
                 "/media/thumbnails/../hls/424242/master.m3u8",
                 "/media/thumbnails/..%2fhls%2f424242%2fmaster.m3u8",
                 "/media/avatars/..%2F..%2Fmedia%2Fhls%2F424242%2Fmaster.m3u8",
                 "/media/hls/424242/master.m3u8"):
        response = await api.get(path)
        assert response.status == 404, path
        assert b"private" not in response.body, path


async def test_avatar_multipart_upload_replaces_previous_file(api, services):
    token = (await api.register("ivy"))["access_token"]
    body, content_type = multipart("avatar", "me.png", image_bytes("PNG", (64, 64)), "image/png")
    first = await api.put("/api/users/profile/avatar", token=token, body=body,
                          headers={"Content-Type": content_type})
    assert first.status == 200
    first_file = services.config.media_dir / first.json["avatar"].removeprefix("/media/")
    assert first_file.exists()
    body, content_type = multipart("avatar", "me2.png", image_bytes("PNG", (32, 32)), "image/png")
    second = await api.put("/api/users/profile/avatar", token=token, body=body,
                           headers={"Content-Type": content_type})
    assert second.status == 200 and second.json["avatar"] != first.json["avatar"]
    assert not first_file.exists()


async def test_avatar_rejects_non_images_and_oversize(api, services):
    token = (await api.register("jack"))["access_token"]
    not_image = await api.put("/api/users/profile/avatar", token=token,
                              body=b"<svg onload=alert(1)>", headers={"Content-Type": "image/png"})
    assert not_image.status == 415
    assert not_image.json["error"]["code"] == "unsupported_media_type"
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    gif_response = await api.put("/api/users/profile/avatar", token=token, body=gif.getvalue(),
                                 headers={"Content-Type": "image/png"})
    assert gif_response.status == 415
    wrong_type = await api.put("/api/users/profile/avatar", token=token, body=b"x",
                               headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415
    huge = b"\x89PNG" + b"0" * (services.config.max_avatar_bytes + 10)
    too_big = await api.put("/api/users/profile/avatar", token=token, body=huge,
                            headers={"Content-Type": "image/png"})
    assert too_big.status == 413 and too_big.json["error"]["code"] == "payload_too_large"
    profile = await api.get("/api/users/profile", token=token)
    assert profile.json["avatar"] is None


async def test_avatar_rejects_pixel_bombs(api, services):
    token = (await api.register("kate"))["access_token"]
    out = io.BytesIO()
    Image.new("1", (6000, 6000)).save(out, "PNG")  # tiny file, 36 Mpx
    response = await api.put("/api/users/profile/avatar", token=token, body=out.getvalue(),
                             headers={"Content-Type": "image/png"})
    assert response.status in (415, 422)
    assert response.json["error"]["code"] in ("validation_error", "unsupported_media_type")


async def test_change_password_revokes_other_sessions(api):
    first = await api.register("liam", password="password123")
    second = (await api.post("/api/auth/login", {"username": "liam",
                                                 "password": "password123"})).json
    wrong = await api.post("/api/users/change-password", {
        "current_password": "not-it-at-all", "new_password": "newpassword456"},
        token=first["access_token"])
    assert wrong.status == 422 and "current_password" in wrong.json["error"]["fields"]
    short = await api.post("/api/users/change-password", {
        "current_password": "password123", "new_password": "short"}, token=first["access_token"])
    assert short.status == 422 and "new_password" in short.json["error"]["fields"]
    ok = await api.post("/api/users/change-password", {
        "current_password": "password123", "new_password": "newpassword456"},
        token=first["access_token"])
    assert ok.status == 204
    assert (await api.get("/api/users/profile", token=first["access_token"])).status == 200
    assert (await api.get("/api/users/profile", token=second["access_token"])).status == 401
    assert (await api.post("/api/auth/refresh-token",
                           {"refresh_token": second["refresh_token"]})).status == 401
    old = await api.post("/api/auth/login", {"username": "liam", "password": "password123"})
    assert old.status == 401
    new = await api.post("/api/auth/login", {"username": "liam", "password": "newpassword456"})
    assert new.status == 200


async def test_the_own_profile_is_never_stale_after_a_write(api, services):
    """GET /api/users/profile is cached (under the generation every such write bumps): each
    change shows on the very next read."""
    from tests.helpers import go_live

    tokens = await api.register("mona", password="password123")
    token = tokens["access_token"]

    async def profile() -> dict:
        response = await api.get("/api/users/profile", token=token)
        assert response.status == 200
        return response.json

    first = await profile()
    assert await profile() == first  # cached now
    assert (await api.put("/api/users/profile", {"bio": "new bio"}, token=token)).status == 200
    assert (await profile())["bio"] == "new bio"
    fan = await api.register("monafan")
    assert (await api.post("/api/users/mona/follow", token=fan["access_token"])).status in (200,
                                                                                            201,
                                                                                            204)
    assert (await profile())["followers_count"] == 1
    before = (await profile())["updated_at"]
    await asyncio.sleep(0.01)
    assert (await api.post("/api/users/change-password", {
        "current_password": "password123", "new_password": "newpassword456"},
        token=token)).status == 204
    assert (await profile())["updated_at"] != before
    await go_live(api, services, tokens)
    assert (await profile())["is_live"] is True
    # Another user's token reads their own profile, never this one.
    assert (await api.get("/api/users/profile",
                          token=fan["access_token"])).json["username"] == "monafan"


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_avatar_burst_neither_stalls_logins_nor_grows_memory(api, services):
    """40 concurrent 25-megapixel PNGs once took 1.6 GB and stalled logins 7.5 s: image work
    now has one thread and a short queue of its own, and bcrypt has its own threads."""
    token = (await api.register("burst"))["access_token"]
    out = io.BytesIO()
    Image.linear_gradient("L").resize((3400, 3400)).convert("RGB").save(out, "PNG")
    large = out.getvalue()  # 11.6 megapixels, a small file
    assert len(large) < services.config.max_avatar_bytes
    before = resident_bytes()
    peak = before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, resident_bytes())
            await asyncio.sleep(0.02)

    async def upload():
        return await api.put("/api/users/profile/avatar", token=token, body=large,
                             headers={"Content-Type": "image/png"})

    async def logins():
        durations = []
        for index in range(15):
            started = time.perf_counter()
            response = await api.post("/api/auth/login", {"username": "burst",
                                                          "password": "password123"},
                                      headers={"X-Forwarded-For": f"192.0.2.{index + 1}"})
            durations.append(time.perf_counter() - started)
            assert response.status == 200
        return sorted(durations)

    sampler = asyncio.ensure_future(sample())
    *uploads, durations = await asyncio.gather(*[upload() for _ in range(12)], logins())
    sampling = False
    await sampler
    p95 = durations[int(len(durations) * 0.95) - 1]
    assert p95 < 0.5, durations
    assert peak - before < 350 * 2**20, (peak - before) / 2**20
    statuses = sorted(response.status for response in uploads)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1, statuses
    busy = [response for response in uploads if response.status == 429]
    assert busy and busy[0].json["error"]["code"] == "rate_limited"
    assert busy[0].headers["Retry-After"]


@pytest.mark.parametrize("chunks", [
    [b"IHDR", b"IEND"],             # no image data at all (was a 500: IndexError in verify)
    [b"IHDR", b"IDAT", b"IEND"],    # image data that is not zlib
])
async def test_crafted_pngs_are_refused_not_crashed_on(api, chunks):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    payloads = {b"IHDR": struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 0), b"IDAT": b"not zlib",
                b"IEND": b""}
    body = b"\x89PNG\r\n\x1a\n" + b"".join(chunk(kind, payloads[kind]) for kind in chunks)
    token = (await api.register("crafty"))["access_token"]
    response = await api.put("/api/users/profile/avatar", token=token, body=body,
                             headers={"Content-Type": "image/png"})
    assert response.status == 415, response
    assert response.json["error"]["code"] == "unsupported_media_type"


async def test_a_huge_image_is_called_too_large(api):
    token = (await api.register("bomber"))["access_token"]
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # past Pillow's own bomb limit
    response = await api.put("/api/users/profile/avatar", token=token, body=out.getvalue(),
                             headers={"Content-Type": "image/png"})
    assert response.status == 422 and "avatar" in response.json["error"]["fields"]
