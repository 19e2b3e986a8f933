// The watch page (`/watch/<stream id>`): an hls.js player tuned for low latency, a quality
// selector over the ladder, the live viewer count and the stream's state, title and thumbnail
// from the live WebSocket, an offline state that comes back by itself, a follow button, and
// the chat (chat.js), which shares that one socket.

import { api, currentUser, liveSocketUrl } from "/static/js/api.js";
import { ChatPanel } from "/static/js/chat.js";
import { $, el, renderHeader, setText, showError, viewersLabel } from "/static/js/ui.js";

// Measured with bench/web_latency.py (1 s segments, the ladder on this 2-core machine); see
// README "Web front". hls.js's default holds three segments back from the live edge (~3.4 s);
// 1.5 s keeps a little over one segment of buffer, which the playlist's 1 s refresh refills in
// time, and a slightly faster playback rate catches up after a hiccup instead of a jump.
export const PLAYER_CONFIG = {
  workerPath: "/vendor/hls/hls.worker.js", // a file, so the CSP needs no blob: workers
  enableWorker: true,
  lowLatencyMode: true,
  liveSyncDuration: 1.5,
  liveMaxLatencyDuration: 5,
  maxLiveSyncPlaybackRate: 1.1,
  liveDurationInfinity: true,
  backBufferLength: 8,
  maxBufferLength: 8,
  startLevel: 0, // the lowest rung starts fastest; ABR climbs once it has measured throughput
  capLevelToPlayerSize: true,
  startFragPrefetch: true,
};
const OFFLINE_POLL_MS = 5000;
// A stream is live from the moment the encoder connects; its transcoder writes the first
// playlist a little later (after probing the source and one segment). Asking before would be
// a 404 (an error in the console), so the player starts once the stream has its first
// thumbnail (FFmpeg is producing) plus two segments' time.
const FIRST_PLAYLIST_MS = 2000;
const SETTLED_STREAM_MS = 15000;
const streamId = Number((location.pathname.match(/^\/watch\/(\d{1,18})$/) || [])[1]);

// Read by the browser tests and bench/web_latency.py.
const diagnostics = { hls: null, stalls: 0, playing: false, socketMessages: 0, streamId };
window.sfWatch = diagnostics;

const page = {
  id: streamId,
  stream: null,
  hls: null,
  socket: null,
  socketRetry: 0,
  socketTimer: 0,
  offlineTimer: 0,
  startTimer: 0,
  thumbnailSeen: { id: 0, at: 0 },
  following: false,
};

const video = $("#video");
const chat = new ChatPanel({ send: sendOnSocket, me: currentUser() });
window.sfChat = chat; // read by the browser tests

function showStream(stream) {
  page.stream = stream;
  const title = stream.title || "Untitled stream";
  setText("#title", title);
  document.title = `${title} — ${stream.user.username} — SF`;
  setText("#streamer", stream.user.username);
  setText("#category-name", stream.category ? stream.category.name : "");
  $("#category-name").hidden = !stream.category;
  setText("#description", stream.description || "");
  setText("#bio", stream.user.bio ? `About ${stream.user.username}: ${stream.user.bio}` : "");
  chat.setStream(stream);
  if (stream.thumbnail) {
    video.poster = stream.thumbnail;
    $("#offline-thumb").src = stream.thumbnail;
    $("#offline-thumb").hidden = false;
  }
  setState(stream.is_live);
}

function setState(live) {
  setText("#state", live ? "LIVE" : "OFFLINE");
  $("#state").classList.toggle("live", live);
  $("#offline").hidden = live;
}

// --- the player ---------------------------------------------------------------------------

function destroyPlayer() {
  clearTimeout(page.startTimer);
  if (page.hls) {
    page.hls.destroy();
    page.hls = null;
    diagnostics.hls = null;
  }
  diagnostics.playing = false;
}

function fillQualities(hls) {
  const select = $("#quality");
  const options = hls.levels
    .map((level, index) => ({ index, level }))
    .sort((a, b) => b.level.height - a.level.height)
    .map(({ index, level }) => el("option", { value: index, text: level.height ? `${level.height}p` : `${Math.round(level.bitrate / 1000)} kb/s` }));
  select.replaceChildren(el("option", { value: "-1", text: "Auto" }), ...options);
  select.value = "-1";
}

function readyToPlay(stream) {
  if (!stream.thumbnail) return false;
  if (Date.now() - Date.parse(stream.started_at) > SETTLED_STREAM_MS) return true;
  if (page.thumbnailSeen.id !== stream.id) page.thumbnailSeen = { id: stream.id, at: Date.now() };
  return Date.now() - page.thumbnailSeen.at >= FIRST_PLAYLIST_MS;
}

function startPlayer() {
  destroyPlayer();
  clearTimeout(page.startTimer);
  const stream = page.stream;
  if (!stream || !stream.is_live || !stream.playback) return;
  if (!readyToPlay(stream)) {
    page.startTimer = setTimeout(async () => {
      try {
        const fresh = await api("GET", `/api/streams/${page.id}`);
        if (fresh.is_live) {
          showStream(fresh);
          startPlayer();
        } else {
          goOffline();
        }
      } catch (error) {
        showError("#watch-error", error);
      }
    }, 1000);
    return;
  }
  if (!window.Hls || !window.Hls.isSupported()) {
    if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = stream.playback.hls; // Safari plays HLS natively
      return;
    }
    showError("#watch-error", new Error("This browser cannot play HLS (no Media Source Extensions)."));
    return;
  }
  const Hls = window.Hls;
  const hls = new Hls(PLAYER_CONFIG);
  page.hls = hls;
  diagnostics.hls = hls;
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    fillQualities(hls);
    video.play().catch(() => {}); // autoplay may be refused until the viewer interacts
  });
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
    const level = hls.levels[data.level];
    const auto = $("#quality").querySelector('option[value="-1"]');
    if (auto && level) auto.textContent = hls.autoLevelEnabled ? `Auto (${level.height}p)` : "Auto";
  });
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (!data.fatal) return;
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
      return;
    }
    // The playlist went away (the stream ended, or a signed URL expired): read the stream
    // again, and play it again if it is still live.
    destroyPlayer();
    setTimeout(refreshStream, 1000);
  });
  hls.loadSource(stream.playback.hls);
  hls.attachMedia(video);
}

video.addEventListener("playing", () => {
  diagnostics.playing = true;
});
video.addEventListener("waiting", () => {
  if (diagnostics.playing) diagnostics.stalls += 1;
});

$("#quality").addEventListener("change", (event) => {
  if (page.hls) page.hls.nextLevel = Number(event.target.value);
});

// --- stream state ---------------------------------------------------------------------------

async function refreshStream() {
  try {
    const stream = await api("GET", `/api/streams/${page.id}`);
    const wasLive = page.stream && page.stream.is_live && page.hls;
    showStream(stream);
    if (stream.is_live && !wasLive) goLive();
    else if (!stream.is_live) goOffline();
  } catch (error) {
    showError("#watch-error", error);
  }
}

function goLive() {
  clearInterval(page.offlineTimer);
  page.offlineTimer = 0;
  setState(true);
  startPlayer();
}

function goOffline() {
  destroyPlayer();
  setState(false);
  if (!page.offlineTimer) page.offlineTimer = setInterval(lookForNextStream, OFFLINE_POLL_MS);
}

async function lookForNextStream() {
  // A streamer who goes live again after the grace period gets a new stream id: follow it.
  if (!page.stream) return;
  try {
    const { data } = await api("GET", `/api/users/${encodeURIComponent(page.stream.user.username)}/streams?limit=1`);
    const next = data.find((stream) => stream.is_live);
    if (!next) return;
    if (next.id !== page.id) {
      page.id = next.id;
      diagnostics.streamId = next.id;
      history.replaceState(null, "", `/watch/${next.id}`);
      connectSocket(true);
    }
    showStream(next);
    goLive();
  } catch {
    // Try again at the next tick.
  }
}

// --- the live WebSocket: counts, stream state and chat ----------------------------------------

function sendOnSocket(frame) {
  const socket = page.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;
  }
  // The server coalesces frames: a batch carries several messages, handled in order.
  const messages = message && message.type === "batch" && Array.isArray(message.items) ? message.items : [message];
  for (const item of messages) {
    if (item && typeof item === "object") onLiveMessage(item);
  }
}

function onLiveMessage(message) {
  // Counts and state name their stream; chat frames (some without a stream id) come only for
  // this socket's stream.
  if (message.stream_id !== undefined && message.stream_id !== page.id) return;
  diagnostics.socketMessages += 1;
  if (typeof message.type === "string" && message.type.startsWith("chat.")) {
    chat.handle(message);
  } else if (message.type === "viewers") {
    setText("#viewers", viewersLabel(message.viewers));
  } else if (message.type === "stream" && page.stream) {
    const changed = { ...page.stream, is_live: message.is_live };
    if (message.title !== undefined && message.title !== null) changed.title = message.title;
    if (message.thumbnail) changed.thumbnail = message.thumbnail;
    const wasLive = page.stream.is_live;
    showStream(changed);
    if (message.is_live && !wasLive) refreshStream(); // a fresh playback URL, then play
    else if (!message.is_live && wasLive) goOffline();
  }
}

async function connectSocket(reset = false) {
  clearTimeout(page.socketTimer);
  if (reset && page.socket) {
    const old = page.socket;
    page.socket = null;
    if (old.readyState === WebSocket.OPEN) old.close(1000);
    else old.onopen = () => old.close(1000);
  }
  chat.connectedChanged(false);
  const url = await liveSocketUrl(page.id);
  const socket = new WebSocket(url);
  page.socket = socket;
  socket.onopen = () => {
    page.socketRetry = 0;
    if (page.socket === socket) chat.connectedChanged(true);
  };
  socket.onmessage = onSocketMessage;
  socket.onclose = (event) => {
    if (page.socket !== socket) return;
    page.socket = null;
    chat.connectedChanged(false);
    if (event.code === 4404) {
      setText("#viewers", "");
      setText("#chat-settings", "");
      showError("#watch-error", new Error("This stream does not exist or is private."));
      return;
    }
    const delay = Math.min(15000, 1000 * 2 ** page.socketRetry);
    page.socketRetry += 1;
    page.socketTimer = setTimeout(connectSocket, delay);
  };
}

// --- follow ---------------------------------------------------------------------------------

function showFollow() {
  const button = $("#follow");
  button.textContent = page.following ? "Following" : "Follow";
  button.setAttribute("aria-pressed", String(page.following));
}

async function setUpFollow() {
  const me = currentUser();
  const button = $("#follow");
  const owner = page.stream.user.username;
  if (me && me.username.toLowerCase() === owner.toLowerCase()) return; // your own stream
  button.hidden = false;
  if (!me) {
    button.textContent = "Follow";
    button.addEventListener("click", () => location.assign(`/login?next=${encodeURIComponent(location.pathname)}`));
    return;
  }
  try {
    const { data } = await api("GET", `/api/users/${encodeURIComponent(me.username)}/following?limit=100`);
    page.following = data.some((user) => user.username === owner);
  } catch {
    page.following = false;
  }
  showFollow();
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(page.following ? "DELETE" : "POST", `/api/users/${encodeURIComponent(owner)}/follow`, undefined, { auth: "required" });
      page.following = !page.following;
      showFollow();
    } catch (error) {
      showError("#watch-error", error);
    } finally {
      button.disabled = false;
    }
  });
}

async function init() {
  renderHeader();
  if (!page.id) {
    showError("#watch-error", new Error("No such stream."));
    return;
  }
  try {
    showStream(await api("GET", `/api/streams/${page.id}`));
  } catch (error) {
    setText("#title", "Stream not found");
    showError("#watch-error", error);
    return;
  }
  connectSocket();
  setUpFollow();
  if (page.stream.is_live) goLive();
  else goOffline();
}

init();
