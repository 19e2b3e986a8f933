// The creator dashboard: stream key (hidden until revealed, with reset) and RTMP URL for OBS,
// default stream settings, the live stream's title and category, transcoder health (read from
// the stream's own HLS playlists), profile bio, statistics with a viewers-over-time chart, the
// chat (moderation.js: settings, moderators, bans, moderation log), notifications
// (notification-settings.js: channels, muted channels, browser notifications), webhooks
// (webhooks.js), and the account: e-mail verification, the privacy policy to accept when it
// changed, data exports, and deleting the account.

import { api, ApiError, forgetSession, privacyPolicy, updateStoredUser } from "/static/js/api.js";
import { setUpChatSection } from "/static/js/moderation.js";
import { setUpNotificationsSection, showEmailNote } from "/static/js/notification-settings.js";
import { $, el, formatCount, formatDuration, renderHeader, setText, showError } from "/static/js/ui.js";
import { setUpWebhooksSection } from "/static/js/webhooks.js";

const LIVE_POLL_MS = 5000;
const HEALTH_POLL_MS = 2000;
const STATS_POLL_MS = 10000;
const STALLED_AFTER_MS = 4000; // 1 s segments: a playlist this old means the transcoder is stuck
const EXPORT_POLL_MS = 2000; // while an export is being built
const EXPORT_STATUS = { pending: "being prepared…", ready: "ready", failed: "failed (request a new one)" };

const state = { me: null, policyVersion: null, exportTimer: 0, deleting: false, key: null, revealed: false, live: null, liveFormFor: 0, health: new Map(), chart: null, categories: [] };

function formError(form, error) {
  showError(form.querySelector(".error"), error);
}

function facts(target, rows) {
  const list = typeof target === "string" ? $(target) : target;
  list.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
}

// --- stream key -------------------------------------------------------------------------------

function showKey() {
  const input = $("#stream-key");
  input.value = state.revealed && state.key ? state.key.stream_key : "";
  input.type = state.revealed ? "text" : "password";
  $("#reveal-key").textContent = state.revealed ? "Hide" : "Reveal";
  $("#reveal-key").setAttribute("aria-pressed", String(state.revealed));
  $("#copy-key").disabled = !state.revealed;
  $("#rtmp-url").value = state.key ? state.key.rtmp_url : "";
}

async function loadKey() {
  state.key = await api("GET", "/api/stream/key", undefined, { auth: "required" });
  showKey();
}

function setUpKey() {
  $("#reveal-key").addEventListener("click", () => {
    state.revealed = !state.revealed;
    showKey();
  });
  const reset = $("#reset-key");
  let armed = 0;
  reset.addEventListener("click", async () => {
    if (!armed) {
      // Two steps instead of a modal confirm(): the old key stops working at once and a live
      // publish that uses it is dropped.
      reset.textContent = "Click again to reset: OBS must get the new key";
      armed = setTimeout(() => {
        armed = 0;
        reset.textContent = "Reset key";
      }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    reset.textContent = "Reset key";
    try {
      state.key = await api("POST", "/api/stream/key/reset", undefined, { auth: "required" });
      state.revealed = true;
      showKey();
      setText("#key-status", "New key made. The old one no longer works.");
    } catch (error) {
      showError("#dashboard-error", error);
    }
  });
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const value = $(`#${button.dataset.copy}`).value;
      try {
        await navigator.clipboard.writeText(value);
        setText("#key-status", "Copied.");
      } catch {
        $(`#${button.dataset.copy}`).select();
        setText("#key-status", "Press Ctrl+C to copy.");
      }
    });
  }
}

// --- categories and settings -----------------------------------------------------------------

function fillCategorySelects() {
  for (const select of document.querySelectorAll(".category-select")) {
    select.replaceChildren(el("option", { value: "", text: "No category" }),
      ...state.categories.map((category) => el("option", { value: category.id, text: category.name })));
  }
}

function categoryValue(value) {
  return value ? Number(value) : null;
}

async function loadDefaults() {
  const form = $("#defaults-form");
  const settings = await api("GET", "/api/stream/settings", undefined, { auth: "required" });
  form.elements.title.value = settings.title || "";
  form.elements.description.value = settings.description || "";
  form.elements.category_id.value = settings.category_id ? String(settings.category_id) : "";
  form.elements.is_private.checked = Boolean(settings.is_private);
  form.elements.source_passthrough.checked = Boolean(settings.source_passthrough);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError(form, null);
    try {
      await api("PUT", "/api/stream/settings", {
        title: form.elements.title.value,
        description: form.elements.description.value,
        category_id: categoryValue(form.elements.category_id.value),
        is_private: form.elements.is_private.checked,
        source_passthrough: form.elements.source_passthrough.checked,
      }, { auth: "required" });
      setText(form.querySelector(".status"), "Saved.");
    } catch (error) {
      formError(form, error);
    }
  });
}

function setUpProfile() {
  const form = $("#profile-form");
  form.elements.bio.value = state.me.bio || "";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError(form, null);
    try {
      state.me = await api("PUT", "/api/users/profile", { bio: form.elements.bio.value }, { auth: "required" });
      updateStoredUser(state.me);
      setText(form.querySelector(".status"), "Saved.");
    } catch (error) {
      formError(form, error);
    }
  });
}

// --- account and privacy ---------------------------------------------------------------------

async function reloadProfile() {
  state.me = await api("GET", "/api/users/profile", undefined, { auth: "required" });
  updateStoredUser(state.me);
  showEmail();
  await checkPolicy();
}

function showEmail() {
  const me = state.me;
  const verified = Boolean(me.email_verified && !me.pending_email);
  let text;
  if (me.pending_email) {
    text = `Your new address ${me.pending_email} waits for the link mailed to it; until it is confirmed, the account keeps ${me.email}.`;
  } else if (me.email_verified) {
    text = `${me.email} is verified.`;
  } else {
    text = `${me.email} is not verified yet: open the link mailed to it.`;
  }
  setText("#email-state", text);
  $("#email-state").dataset.verified = String(verified);
  $("#resend-verification").hidden = verified;
  showEmailNote(me);
}

async function checkPolicy() {
  /** The banner with the policy in force, while the user has not accepted that version. */
  const banner = $("#policy-banner");
  const { privacy_policy_accepted: accepted, privacy_policy_current: current } = state.me;
  if (!current || accepted === current) {
    banner.hidden = true;
    return;
  }
  const policy = await privacyPolicy();
  state.policyVersion = policy.version;
  setText("#policy-banner-version", `(version ${policy.version})`);
  setText("#policy-banner-text", policy.text);
  banner.hidden = false;
}

function setUpAccount() {
  const resend = $("#resend-verification");
  resend.addEventListener("click", async () => {
    showError("#email-error", null);
    resend.disabled = true;
    try {
      await api("POST", "/api/users/profile/verify-email", undefined, { auth: "required" });
      setText("#email-status", `Sent to ${state.me.pending_email || state.me.email}. The link mailed before no longer works.`);
    } catch (error) {
      showError("#email-error", error);
    } finally {
      resend.disabled = false;
    }
  });
  const accept = $("#accept-policy");
  accept.addEventListener("click", async () => {
    const errorBox = $("#policy-banner .error");
    showError(errorBox, null);
    accept.disabled = true;
    try {
      await api("POST", "/api/users/profile/consents", { privacy_policy: state.policyVersion }, { auth: "required" });
      await reloadProfile();
    } catch (error) {
      showError(errorBox, error);
      await checkPolicy().catch(() => {}); // the policy may have changed again meanwhile
    } finally {
      accept.disabled = false;
    }
  });
  // Verified in another tab (the mailed link): show it when the user comes back.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !state.deleting) reloadProfile().catch(() => {});
  });
  setUpExports();
  setUpDeletion();
}

function exportItem(item) {
  const children = [
    el("span", { text: `${new Date(item.created_at).toLocaleString()}: ` }),
    el("span", { class: "badge", "data-testid": "export-status", text: EXPORT_STATUS[item.status] || item.status }),
  ];
  if (item.status === "ready" && item.download_url) {
    children.push(" ", el("a", { href: item.download_url, download: "", "data-testid": "export-download" }, "Download the ZIP"));
    if (item.expires_at) children.push(el("span", { class: "status", text: ` (until ${new Date(item.expires_at).toLocaleString()})` }));
  }
  return el("li", { "data-export-id": item.id, "data-status": item.status }, children);
}

async function loadExports() {
  clearTimeout(state.exportTimer);
  const { data } = await api("GET", "/api/users/profile/exports?limit=5", undefined, { auth: "required" });
  const list = $("#exports");
  list.replaceChildren(...data.map(exportItem));
  if (!data.length) list.append(el("li", { class: "status", text: "No export yet." }));
  if (data.some((item) => item.status === "pending")) {
    state.exportTimer = setTimeout(() => loadExports().catch((error) => showError("#export-error", error)), EXPORT_POLL_MS);
  }
}

function setUpExports() {
  const button = $("#request-export");
  button.addEventListener("click", async () => {
    showError("#export-error", null);
    button.disabled = true;
    try {
      // 409 (one is being prepared) and 429 (too many today) say so in their message.
      await api("POST", "/api/users/profile/exports", undefined, { auth: "required" });
    } catch (error) {
      showError("#export-error", error);
    } finally {
      button.disabled = false;
    }
    await loadExports().catch((error) => showError("#export-error", error));
  });
  loadExports().catch((error) => showError("#export-error", error));
}

function setUpDeletion() {
  const start = $("#delete-start");
  const form = $("#delete-form");
  const confirm = form.querySelector("button[type=submit]");
  let armed = false;
  const disarm = () => {
    armed = false;
    confirm.textContent = "Delete my account";
  };
  start.addEventListener("click", () => {
    start.hidden = true;
    form.hidden = false;
    form.elements.password.focus();
  });
  $("#delete-cancel").addEventListener("click", () => {
    disarm();
    form.reset();
    formError(form, null);
    form.hidden = true;
    start.hidden = false;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError(form, null);
    if (!form.checkValidity()) {
      formError(form, new Error("Your password: type it to delete the account."));
      form.elements.password.focus();
      return;
    }
    if (!armed) {
      // The confirm step: a second, deliberate click (no modal confirm()).
      armed = true;
      confirm.textContent = "Click again to delete the account for good";
      return;
    }
    confirm.disabled = true;
    state.deleting = true;
    try {
      const { erase_after: eraseAfter } = await api("DELETE", "/api/users/profile",
        { password: form.elements.password.value }, { auth: "required" });
      // Every session ended on the server: forget this one and say what happens next.
      forgetSession();
      location.assign(`/login?deleted=${encodeURIComponent(eraseAfter)}`);
    } catch (error) {
      state.deleting = false;
      formError(form, error);
      confirm.disabled = false;
      disarm();
    }
  });
}

// --- the live stream and its transcoder --------------------------------------------------------

async function latestStreams() {
  const { data } = await api("GET", `/api/users/${encodeURIComponent(state.me.username)}/streams?limit=5`, undefined, { auth: "required" });
  return data;
}

function showLive(stream) {
  const form = $("#live-form");
  state.live = stream;
  if (!stream) {
    setText("#live-state", "You are not live. Start streaming in OBS with the server and key above.");
    form.hidden = true;
    state.liveFormFor = 0;
    state.health.clear();
    facts("#health", [["State", "not live"]]);
    return;
  }
  setText("#live-state", `Live since ${new Date(stream.started_at).toLocaleTimeString()} · ${formatCount(stream.viewers_count)} viewers`);
  form.hidden = false;
  $("#live-link").href = `/watch/${stream.id}`;
  if (state.liveFormFor !== stream.id) {
    // Filled once per stream, so a poll never overwrites what the streamer is typing.
    state.liveFormFor = stream.id;
    form.elements.title.value = stream.title || "";
    form.elements.category_id.value = stream.category ? String(stream.category.id) : "";
  }
}

function setUpLiveForm() {
  const form = $("#live-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError(form, null);
    if (!state.live) return;
    try {
      const stream = await api("PUT", `/api/streams/${state.live.id}`, {
        title: form.elements.title.value.trim(),
        category_id: categoryValue(form.elements.category_id.value),
      }, { auth: "required" });
      showLive(stream);
      setText("#live-state", `Updated: “${stream.title}”`);
    } catch (error) {
      formError(form, error);
    }
  });
}

function parseMaster(text, base) {
  const variants = [];
  const lines = text.split("\n").map((line) => line.trim());
  lines.forEach((line, index) => {
    if (!line.startsWith("#EXT-X-STREAM-INF:")) return;
    const resolution = /RESOLUTION=\d+x(\d+)/.exec(line);
    const bandwidth = /BANDWIDTH=(\d+)/.exec(line);
    const uri = lines.slice(index + 1).find((next) => next && !next.startsWith("#"));
    if (uri) variants.push({ name: resolution ? `${resolution[1]}p` : uri.split("/")[0], bandwidth: bandwidth ? Number(bandwidth[1]) : 0, url: new URL(uri, base).toString() });
  });
  return variants;
}

async function checkHealth() {
  const stream = state.live;
  if (!stream || !stream.playback) return;
  const base = new URL(stream.playback.hls, location.href);
  const master = await fetch(base, { cache: "no-store" });
  if (!master.ok) {
    facts("#health", [["State", "starting (no playlist yet)"]]);
    return;
  }
  const variants = parseMaster(await master.text(), base);
  const now = Date.now();
  const rows = [];
  let stalled = 0;
  for (const variant of variants) {
    const response = await fetch(variant.url, { cache: "no-store" });
    const text = response.ok ? await response.text() : "";
    const sequence = Number((/#EXT-X-MEDIA-SEQUENCE:(\d+)/.exec(text) || [])[1] || -1);
    const segments = (text.match(/#EXTINF:/g) || []).length;
    const seen = state.health.get(variant.name);
    if (!seen || seen.key !== `${sequence}/${segments}`) state.health.set(variant.name, { key: `${sequence}/${segments}`, changed: now });
    const age = now - state.health.get(variant.name).changed;
    if (!seen) {
      rows.push([variant.name, `${Math.round(variant.bandwidth / 1000)} kb/s · checking…`]);
      continue;
    }
    if (age > STALLED_AFTER_MS) stalled += 1;
    rows.push([variant.name, `${Math.round(variant.bandwidth / 1000)} kb/s · ${segments} segments listed · updated ${(age / 1000).toFixed(1)} s ago`]);
  }
  const verdict = !variants.length ? "starting" : stalled ? `stalled (${stalled} of ${variants.length} renditions not advancing)` : "healthy";
  facts("#health", [["State", verdict], ["Renditions", variants.map((v) => v.name).join(", ") || "none yet"], ...rows]);
  $("#health").dataset.state = verdict.split(" ")[0];
}

// --- statistics -------------------------------------------------------------------------------

function drawChart(timeline) {
  const container = $("#chart");
  if (!timeline.length) {
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
    container.replaceChildren(el("p", { class: "status", text: "No viewer samples yet (one every few seconds while live)." }));
    return;
  }
  const data = [timeline.map((point) => Date.parse(point.ts) / 1000), timeline.map((point) => point.viewers)];
  const width = Math.max(260, container.clientWidth - 8);
  if (state.chart) {
    state.chart.setData(data);
    return;
  }
  container.replaceChildren();
  state.chart = new window.uPlot({
    width,
    height: 220,
    scales: { x: { time: true }, y: { range: (_, min, max) => [0, Math.max(1, max)] } },
    series: [{}, { label: "Viewers", stroke: "#6441a5", fill: "rgba(100, 65, 165, 0.15)", width: 2 }],
    axes: [{}, { label: "viewers" }],
  }, data, container);
  window.addEventListener("resize", () => {
    if (state.chart) state.chart.setSize({ width: Math.max(260, container.clientWidth - 8), height: 220 });
  });
}

async function loadStats(streams) {
  const user = await api("GET", `/api/users/${encodeURIComponent(state.me.username)}/statistics`, undefined, { auth: "required" });
  facts("#user-stats", [
    ["Followers", formatCount(user.followers_count)],
    ["Streams", formatCount(user.total_streams)],
    ["Time live", formatDuration(user.total_stream_seconds)],
    ["Watch time", formatDuration(user.total_watch_time_seconds)],
    ["Peak viewers", formatCount(user.peak_viewers)],
    ["Average viewers", Number(user.average_viewers || 0).toFixed(1)],
  ]);
  const latest = streams.find((stream) => stream.is_live) || streams.find((stream) => stream.started_at);
  if (!latest) {
    setText("#stream-stats-heading", "Latest stream");
    facts("#stream-stats", [["", "No stream yet"]]);
    drawChart([]);
    return;
  }
  const stats = await api("GET", `/api/streams/${latest.id}/statistics`, undefined, { auth: "required" });
  setText("#stream-stats-heading", `${latest.is_live ? "Live stream" : "Latest stream"}: ${latest.title || "Untitled"}`);
  facts("#stream-stats", [
    ["Peak viewers", formatCount(stats.peak_viewers)],
    ["Average viewers", Number(stats.average_viewers || 0).toFixed(1)],
    ["Unique viewers", formatCount(stats.unique_viewers)],
    ["Watch time", formatDuration(stats.watch_time_seconds)],
    ["Duration", formatDuration(stats.duration_seconds)],
    ["Followers gained", formatCount(stats.followers_gained)],
  ]);
  drawChart(stats.timeline || []);
}

// --- start ------------------------------------------------------------------------------------

async function poll(task, interval) {
  const run = async () => {
    if (!document.hidden && !state.deleting) {
      try {
        await task();
      } catch (error) {
        showError("#dashboard-error", error);
      }
    }
    setTimeout(run, interval);
  };
  run();
}

async function init() {
  try {
    state.me = await api("GET", "/api/users/profile", undefined, { auth: "required" });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      location.replace("/login?next=/dashboard");
      return;
    }
    showError("#dashboard-error", error);
    return;
  }
  updateStoredUser(state.me);
  renderHeader();
  showEmail();
  setUpAccount();
  checkPolicy().catch((error) => showError("#dashboard-error", error));
  setUpKey();
  setUpProfile();
  setUpLiveForm();
  setUpChatSection();
  setUpNotificationsSection(state.me);
  setUpWebhooksSection();
  try {
    state.categories = (await api("GET", "/api/categories?limit=100")).data;
    fillCategorySelects();
    await Promise.all([loadKey(), loadDefaults()]);
  } catch (error) {
    showError("#dashboard-error", error);
  }
  let streams = [];
  poll(async () => {
    streams = await latestStreams();
    showLive(streams.find((stream) => stream.is_live) || null);
  }, LIVE_POLL_MS);
  poll(checkHealth, HEALTH_POLL_MS);
  setTimeout(() => poll(() => loadStats(streams), STATS_POLL_MS), 500);
}

init();
