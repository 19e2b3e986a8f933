"""The media pipeline for real: FFmpeg publishes RTMP to nginx-rtmp, the API authorizes it,
a StreamActor transcodes to low-latency HLS, nginx serves it."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from harness.platform import Platform, wait_for
from sf.media.hls import sign_playback

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def platform(base_config, tmp_path_factory):
    node = Platform(base_config, tmp_path_factory.mktemp("media-node")).start()
    yield node
    node.stop()


def playlist_ready(platform, stream_id):
    status, body, _ = platform.get(f"/hls/{stream_id}/master.m3u8")
    return status == 200 and b"#EXT-X-STREAM-INF" in body and body


def variant_segments(platform, stream_id, variant):
    status, body, _ = platform.get(f"/hls/{stream_id}/{variant}/index.m3u8")
    if status != 200:
        return []
    return [line for line in body.decode().splitlines() if line.endswith(".ts")]


def ffprobe_json(url):
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,width,height", "-of",
         "json", url], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["streams"]


def test_publish_with_valid_key_goes_live_with_a_720p_ladder(platform):
    user, publisher, stream = platform.go_live("ladder", size="1280x720", rate=24)
    sid = stream["id"]
    assert stream["playback"] == {"hls": f"/hls/{sid}/master.m3u8"}
    master = wait_for(lambda: playlist_ready(platform, sid), 30, what="master.m3u8").decode()
    variants = re.findall(r"#EXT-X-STREAM-INF:([^\n]+)\n([^\n]+)", master)
    assert [uri for _, uri in variants] == ["720p/index.m3u8", "480p/index.m3u8"]  # never upscaled
    for attributes, _ in variants:
        assert re.search(r"BANDWIDTH=\d{5,}", attributes)
        assert 'CODECS="avc1.' in attributes and "mp4a.40.2" in attributes
    assert "RESOLUTION=1280x720" in variants[0][0] and "RESOLUTION=854x480" in variants[1][0]
    for variant, height in (("720p", 720), ("480p", 480)):
        wait_for(lambda v=variant: len(variant_segments(platform, sid, v)) >= 3, 30,
                 what=f"{variant} segments")
        streams = ffprobe_json(f"{platform.base_url}/hls/{sid}/{variant}/index.m3u8")
        video = next(s for s in streams if s["codec_type"] == "video")
        assert video["height"] == height
        assert any(s["codec_type"] == "audio" for s in streams)
    status, media, headers = platform.get(f"/hls/{sid}/720p/index.m3u8")
    text = media.decode()
    assert "#EXT-X-TARGETDURATION:1" in text and "#EXT-X-INDEPENDENT-SEGMENTS" in text
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", text)]
    assert durations and all(0.5 <= d <= 1.6 for d in durations), durations
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    segment = variant_segments(platform, sid, "720p")[-1]
    status, data, headers = platform.get(f"/hls/{sid}/720p/{segment}")
    assert status == 200 and data[:1] == b"G"  # MPEG-TS sync byte
    assert "max-age=86400" in headers["Cache-Control"]
    assert headers["Content-Type"] == "video/mp2t"
    # A thumbnail appears, is a real JPEG, and is announced on the stream.
    thumbnail = wait_for(lambda: platform.stream(sid)["thumbnail"], 20, what="a thumbnail")
    assert re.fullmatch(r"/media/thumbnails/\d+-[A-Za-z0-9_-]+\.jpg\?v=\d+", thumbnail)
    status, jpeg, _ = platform.get(thumbnail)
    assert status == 200
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.size[1] == 360
    # The key is nowhere on disk: no path, no playlist.
    for path in platform.config.media_dir.rglob("*"):
        assert user["key"] not in str(path)
        if path.suffix in (".m3u8",):
            assert user["key"] not in path.read_text()
    publisher.kill()


def test_wrong_key_is_refused(platform):
    platform.register("wrongkey")
    publisher = platform.publish("live_1_not-a-real-key-at-all-000000000000000", seconds=10)
    assert publisher.wait(timeout=20) != 0
    assert platform.live_stream_of("wrongkey") is None
    status, body, _ = platform.request("GET", "/api/streams")
    assert all(s["user"]["username"] != "wrongkey" for s in body["data"])


def test_killed_transcoder_is_restarted_and_the_playlist_keeps_advancing(platform):
    _, publisher, stream = platform.go_live("restarts")
    sid = stream["id"]
    variant = f"/hls/{sid}/360p/index.m3u8"
    wait_for(lambda: platform.media_sequence(variant) is not None, 30, what="a playlist")
    first = wait_for(lambda: platform.transcoder_pids(sid), 10, what="the transcoder")
    # Killed after it wrote a thumbnail: the new one must overwrite it, not stop to ask.
    wait_for(lambda: platform.stream(sid)["thumbnail"], 20, what="a thumbnail")
    before = platform.media_sequence(variant)
    os.kill(first[0], signal.SIGKILL)
    restarted = wait_for(lambda: [p for p in platform.transcoder_pids(sid) if p not in first], 20,
                         what="a new transcoder")
    assert restarted
    wait_for(lambda: (platform.media_sequence(variant) or 0) > before + 2, 30,
             what="the playlist to advance after the restart")
    assert platform.stream(sid)["is_live"] is True
    publisher.kill()


def test_stopping_the_publisher_ends_the_stream_after_the_grace_period(platform):
    _, publisher, stream = platform.go_live("stopper")
    sid = stream["id"]
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")
    wait_for(lambda: platform.stream(sid)["thumbnail"], 20, what="a thumbnail")
    publisher.send_signal(signal.SIGINT)  # OBS "Stop streaming"
    publisher.wait(timeout=10)
    wait_for(lambda: not platform.transcoder_pids(sid), 10, what="the transcoder to stop")
    ended = wait_for(lambda: (lambda s: not s["is_live"] and s)(platform.stream(sid)), 20,
                     what="the stream to end")
    assert ended["ended_at"] and ended["playback"] is None
    # Segments go after the retention period; the last thumbnail stays.
    hls_dir = platform.config.media_dir / "hls" / str(sid)
    wait_for(lambda: not hls_dir.exists(), 20, what="the segments to be removed")
    assert ended["thumbnail"] and platform.get(ended["thumbnail"])[0] == 200


def test_reconnect_within_grace_continues_the_same_stream(platform):
    user, publisher, stream = platform.go_live("flaky")
    sid = stream["id"]
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")
    publisher.kill()  # the encoder's connection drops
    publisher.wait()
    time.sleep(1)
    platform.publish(user["key"])
    wait_for(lambda: platform.transcoder_pids(sid), 20, what="the transcoder to come back")
    time.sleep(5)  # past the grace period: still the same live stream
    again = platform.live_stream_of("flaky")
    assert again is not None and again["id"] == sid
    status, body, _ = platform.request("GET", "/api/users/flaky/streams")
    assert len(body["data"]) == 1


def test_delete_drops_the_publisher(platform):
    user, publisher, stream = platform.go_live("deleter")
    sid = stream["id"]
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")
    status, _, _ = platform.request("DELETE", f"/api/streams/{sid}", token=user["token"])
    assert status == 204
    assert publisher.wait(timeout=15) is not None  # nginx-rtmp dropped it
    wait_for(lambda: not platform.transcoder_pids(sid), 10, what="the transcoder to stop")
    assert platform.stream(sid)["is_live"] is False


def test_key_reset_drops_the_live_publish_and_the_old_key_stops_working(platform):
    user, publisher, stream = platform.go_live("resetter")
    sid = stream["id"]
    wait_for(lambda: platform.transcoder_pids(sid), 15, what="the transcoder")
    status, new_key, _ = platform.request("POST", "/api/stream/key/reset", token=user["token"])
    assert status == 200
    assert publisher.wait(timeout=15) is not None
    assert platform.stream(sid)["is_live"] is False
    stale = platform.publish(user["key"], seconds=10)
    assert stale.wait(timeout=20) != 0
    platform.publish(new_key["stream_key"])
    fresh = wait_for(lambda: platform.live_stream_of("resetter"), 20, what="a new stream")
    assert fresh["id"] != sid


def test_private_stream_hls_only_through_a_signed_url(platform):
    owner = platform.register("secretive")
    fan = platform.register("secretfan")
    stranger = platform.register("outsider")
    follower = platform.register("merefollower")
    platform.request("PUT", "/api/stream/allowed-viewers/secretfan", token=owner["token"])
    platform.request("POST", "/api/users/secretive/follow", token=follower["token"])
    platform.request("PUT", "/api/stream/settings", {"is_private": True}, token=owner["token"])
    platform.publish(owner["key"])

    def owners_live_stream():
        body = platform.request("GET", "/api/users/secretive/streams", token=owner["token"])[1]
        return next((s for s in body["data"] if s["is_live"]), None)

    stream = wait_for(owners_live_stream, 20, what="the private stream")
    sid = stream["id"]
    signed = stream["playback"]["hls"]
    assert re.fullmatch(rf"/hls/{sid}/\d+-[A-Za-z0-9_-]{{22}}/master\.m3u8", signed)
    base = signed.rsplit("/", 1)[0]
    wait_for(lambda: len(variant_segments_at(platform, base)) >= 2, 30, what="private segments")
    segment = variant_segments_at(platform, base)[-1]
    # Allowed viewers: the signed prefix serves every file.
    for path in (signed, f"{base}/360p/index.m3u8", f"{base}/360p/{segment}"):
        assert platform.get(path)[0] == 200, path
    fan_view = platform.stream(sid, token=fan["token"])
    assert fan_view["playback"]["hls"].startswith(f"/hls/{sid}/")
    # The signed URL is short-lived (minutes): renewing means reading the stream again.
    expires = int(signed.split("/")[3].split("-")[0])
    assert 0 < expires - time.time() <= platform.config.playback_url_ttl <= 600
    # Strangers (following is not an invitation): the stream does not exist, and no
    # unsigned or forged path serves a file.
    assert platform.request("GET", f"/api/streams/{sid}", token=stranger["token"])[0] == 404
    assert platform.request("GET", f"/api/streams/{sid}", token=follower["token"])[0] == 404
    # The public profile does not reveal that the owner is live.
    assert platform.request("GET", "/api/users/secretive")[1]["is_live"] is False
    for path in (f"/hls/{sid}/master.m3u8", f"/hls/{sid}/360p/index.m3u8",
                 f"/hls/{sid}/360p/{segment}", f"/hls/{sid}/.private"):
        assert platform.get(path)[0] in (403, 404), path
    expires = int(base.split("/")[3].split("-")[0])
    forged = f"/hls/{sid}/{expires}-{'A' * 22}/master.m3u8"
    assert platform.get(forged)[0] == 403
    other_stream = f"/hls/{sid + 1000}/{base.split('/')[3]}/master.m3u8"
    assert platform.get(other_stream)[0] == 403
    expired = sign_playback(sid, platform.config.internal_secret, -10)
    assert platform.get(expired)[0] == 410


def test_privacy_holds_while_the_encoder_reconnects_and_from_any_api_node(platform, tmp_path):
    """Made private between reconnects (no transcoder running) through another API node,
    the stream's HLS still on the media node's disk must stop being served unsigned."""
    owner = platform.register("betweenlives")
    # A second API node on its own "machine" (its own media dir), sharing PostgreSQL + Redis.
    other = platform.start_api_node(tmp_path / "other-media")
    try:
        publisher = platform.publish(owner["key"])
        sid = wait_for(lambda: platform.live_stream_of("betweenlives"), 20, what="live")["id"]
        wait_for(lambda: len(variant_segments(platform, sid, "360p")) >= 2, 30, what="segments")
        segment = variant_segments(platform, sid, "360p")[-1]
        publisher.kill()
        publisher.wait()
        wait_for(lambda: not platform.transcoder_pids(sid), 10, what="the transcoder to stop")
        assert platform.stream(sid)["is_live"] is True  # within the grace period
        # Still served, and so in the edge's cache too.
        assert platform.get(f"/hls/{sid}/master.m3u8")[0] == 200
        assert platform.get(f"/hls/{sid}/360p/{segment}")[0] == 200
        assert platform.get(f"/hls/{sid}/360p/{segment}")[2].get("X-Cache") == "HIT"
        status, _, _ = platform.request_node(other, "PUT", f"/api/streams/{sid}",
                                             {"is_private": True}, token=owner["token"])
        assert status == 200
        paths = (f"/hls/{sid}/master.m3u8", f"/hls/{sid}/360p/index.m3u8",
                 f"/hls/{sid}/360p/{segment}")
        wait_for(lambda: all(platform.get(path)[0] == 404 for path in paths), 1.5,
                 what="the unsigned HLS path to close")
        # Closed by the privacy rule, not because the files are gone or the stream ended.
        hls_dir = platform.config.media_dir / "hls" / str(sid)
        assert (hls_dir / "master.m3u8").is_file() and (hls_dir / ".private").is_file()
        owner_view = platform.stream(sid, token=owner["token"])
        assert owner_view["is_live"] is True and owner_view["is_private"] is True
        assert platform.request("GET", f"/api/streams/{sid}")[0] == 404
        # And back: made public again, it is served again.
        platform.request_node(other, "PUT", f"/api/streams/{sid}", {"is_private": False},
                              token=owner["token"])
        wait_for(lambda: platform.get(f"/hls/{sid}/master.m3u8")[0] == 200, 1.5,
                 what="the public HLS path to reopen")
    finally:
        platform.stop_api_node(other)


def test_a_private_streams_thumbnail_is_served_only_signed_even_after_it_ends(platform):
    """security.md#private-thumbnail-leak: the unguessable thumbnail name of a stream stayed readable
    (and kept updating) after the stream went private, an invite was withdrawn, or it ended."""
    owner = platform.register("framedowner")
    guest = platform.register("framedguest")
    platform.request("PUT", "/api/stream/allowed-viewers/framedguest", token=owner["token"])
    publisher = platform.publish(owner["key"])
    sid = wait_for(lambda: platform.live_stream_of("framedowner"), 20, what="live")["id"]
    public_url = wait_for(lambda: platform.stream(sid)["thumbnail"], 20, what="a thumbnail")
    assert platform.get(public_url)[0] == 200
    platform.request("PUT", f"/api/streams/{sid}", {"is_private": True}, token=owner["token"])
    wait_for(lambda: platform.get(public_url)[0] == 404, 1.5, what="the unsigned thumbnail to go")
    for who in (owner, guest):
        signed = platform.stream(sid, token=who["token"])["thumbnail"]
        assert re.fullmatch(rf"/media/thumbnails/\d+-[A-Za-z0-9_-]{{22}}/{sid}-[^/]+\.jpg\?v=\d+",
                            signed), signed
        status, jpeg, headers = platform.get(signed)
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        assert headers["Cache-Control"].startswith("private")
    # Forged, expired, or borrowed from another stream: refused.
    name = public_url.split("/")[-1].split("?")[0]
    assert platform.get(f"/media/thumbnails/{int(time.time()) + 60}-{'A' * 22}/{name}")[0] == 403
    expired = sign_playback(sid, platform.config.internal_secret, -10).split("/")[3]
    assert platform.get(f"/media/thumbnails/{expired}/{name}")[0] == 410
    publisher.kill()
    publisher.wait()
    platform.request("DELETE", f"/api/streams/{sid}", token=owner["token"])
    # After its HLS is cleaned up (retention 3 s), the last picture is still not public.
    wait_for(lambda: not (platform.config.media_dir / "hls" / str(sid)).exists(), 15,
             what="the HLS directory to be removed")
    assert platform.get(public_url)[0] == 404
    assert platform.get(platform.stream(sid, token=owner["token"])["thumbnail"])[0] == 200


def variant_segments_at(platform, base):
    status, body, _ = platform.get(f"{base}/360p/index.m3u8")
    if status != 200:
        return []
    return [line for line in body.decode().splitlines() if line.endswith(".ts")]


def test_callbacks_are_internal_only(platform):
    user = platform.register("hooks")
    # Through the public nginx server they do not exist.
    status, _, _ = platform.request("POST", "/internal/rtmp/on_publish", raw=True)
    assert status == 404
    api = f"http://127.0.0.1:{platform.config.api_port}"

    def post(path, body):
        request = urllib.request.Request(api + path, data=body.encode(), method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    secret = platform.config.internal_secret
    form = f"call=publish&app=live&name={user['key']}"
    assert post("/internal/rtmp/on_publish", form) == 403  # no secret
    assert post("/internal/rtmp/on_publish?secret=wrong", form) == 403
    duplicated = f"call=publish&app=live&name=live_1_decoy&name={user['key']}"
    assert post(f"/internal/rtmp/on_publish?secret={secret}", duplicated) == 400
    assert post(f"/internal/rtmp/on_publish?secret={secret}",
                f"call=publish&app=other&name={user['key']}") == 403
    assert platform.live_stream_of("hooks") is None


def test_rtmp_play_is_loopback_only_and_the_key_never_reaches_a_log(platform):
    conf = (platform.config.var_dir / "nginx" / "nginx.conf").read_text()
    assert "allow play 127.0.0.1;" in conf and "deny play all;" in conf
    assert "drop_idle_publisher" in conf
    assert oct((platform.config.var_dir / "nginx" / "nginx.conf").stat().st_mode)[-3:] == "600"
    logs = platform.logs()
    assert "/internal/rtmp/on_publish" in logs  # the callbacks were logged...
    for match in re.finditer(r"live_\d+_[A-Za-z0-9_-]{40,}", logs):
        pytest.fail(f"a stream key reached a log: {match.group(0)[:12]}…")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


@pytest.mark.parametrize("how", ["crash", "shutdown"])
def test_no_orphan_ffmpeg_when_the_node_goes_away(base_config, tmp_path, how):
    node = Platform(base_config, tmp_path).start()
    try:
        user = node.register(f"node_{how}")
        node.publish(user["key"])
        stream = wait_for(lambda: node.live_stream_of(f"node_{how}"), 20, what="live")
        pids = wait_for(lambda: node.transcoder_pids(stream["id"]), 15, what="the transcoder")
        if how == "crash":
            node.api_process.kill()  # SIGKILL: no cleanup code of ours runs
        else:
            node.api_process.send_signal(signal.SIGINT)  # Ctrl-C
        node.api_process.wait(timeout=20)
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), 10,
                 what="the transcoder to die with the node")
    finally:
        node.stop()
