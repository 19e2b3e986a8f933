// The directory (`/`): live streams with thumbnails, titles, categories and viewer counts,
// filtered by category, searched by title, or only the channels the viewer follows.
// Counts refresh in place every few seconds (the API copies the live totals every ~2 s).

import { api, currentUser } from "/static/js/api.js";
import { $, el, renderHeader, setText, showError, thumbnailNode, viewersLabel } from "/static/js/ui.js";

const REFRESH_MS = 5000;
const state = { tab: "live", q: "", categoryId: "", generation: 0 };

function card(stream) {
  const title = stream.title || "Untitled stream";
  const link = el("a", { href: `/watch/${stream.id}`, class: "stream-link", "data-testid": "stream-link" },
    el("div", { class: "thumb" },
      thumbnailNode(stream.thumbnail, `Preview of ${title}`),
      el("span", { class: "live-badge" }, "LIVE"),
      el("span", { class: "thumb-viewers", "data-role": "viewers" }, viewersLabel(stream.viewers_count))),
    el("span", { class: "stream-title", "data-testid": "stream-title", text: title }));
  return el("li", { class: "stream-card", "data-stream-id": stream.id, "data-testid": "stream-card" },
    link,
    el("p", { class: "stream-byline" },
      el("span", { class: "streamer", text: stream.user.username }),
      stream.category ? el("span", { class: "badge", text: stream.category.name }) : null));
}

function render(streams) {
  const list = $("#streams");
  const known = new Map([...list.children].map((item) => [item.dataset.streamId, item]));
  const wanted = streams.map((stream) => String(stream.id));
  const same = wanted.length === known.size && wanted.every((id, i) => list.children[i].dataset.streamId === id);
  if (same) {
    // The same streams in the same order: update counts, titles and thumbnails in place,
    // so keyboard focus and scroll position stay where they are.
    for (const stream of streams) {
      const item = known.get(String(stream.id));
      setText(item.querySelector("[data-role=viewers]"), viewersLabel(stream.viewers_count));
      setText(item.querySelector("[data-testid=stream-title]"), stream.title || "Untitled stream");
      const img = item.querySelector("img");
      if (stream.thumbnail && (!img || img.getAttribute("src") !== stream.thumbnail)) {
        item.querySelector(".thumb").firstChild.replaceWith(thumbnailNode(stream.thumbnail, `Preview of ${stream.title}`));
      }
    }
  } else {
    list.replaceChildren(...streams.map(card));
  }
  const empty = state.tab === "following" ? "Nobody you follow is live right now." : "No live streams match.";
  setText("#directory-status", streams.length ? `${streams.length} live` : empty);
}

async function followedLiveStreams() {
  const me = currentUser();
  const following = await api("GET", `/api/users/${encodeURIComponent(me.username)}/following?limit=100`);
  const live = following.data.filter((user) => user.is_live);
  const lists = await Promise.all(live.map((user) =>
    api("GET", `/api/streams?username=${encodeURIComponent(user.username)}&limit=5`)));
  const streams = lists.flatMap((list) => list.data);
  return streams
    .filter((s) => (!state.categoryId || String(s.category && s.category.id) === state.categoryId)
      && (!state.q || (s.title || "").toLowerCase().includes(state.q.toLowerCase())))
    .sort((a, b) => b.viewers_count - a.viewers_count);
}

async function liveStreams() {
  const query = new URLSearchParams({ limit: "60" });
  if (state.q) query.set("q", state.q);
  if (state.categoryId) query.set("category_id", state.categoryId);
  return (await api("GET", `/api/streams?${query}`)).data;
}

async function load() {
  const generation = ++state.generation;
  try {
    const streams = state.tab === "following" ? await followedLiveStreams() : await liveStreams();
    if (generation !== state.generation) return; // a newer filter won the race
    showError("#directory-error", null);
    render(streams);
  } catch (error) {
    if (generation === state.generation) showError("#directory-error", error);
  }
}

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("[role=tab]")) {
    button.setAttribute("aria-selected", String(button.id === `tab-${tab}`));
  }
  load();
}

async function loadCategories() {
  try {
    const { data } = await api("GET", "/api/categories?limit=100");
    const select = $("#category");
    for (const category of data) select.append(el("option", { value: category.id, text: category.name }));
  } catch (error) {
    showError("#directory-error", error);
  }
}

function init() {
  renderHeader();
  const following = $("#tab-following");
  if (!currentUser()) following.hidden = true;
  $("#tab-live").addEventListener("click", () => selectTab("live"));
  following.addEventListener("click", () => selectTab("following"));
  let typing = 0;
  $("#search").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.q = event.target.value.trim();
      load();
    }, 250);
  });
  $("#category").addEventListener("change", (event) => {
    state.categoryId = event.target.value;
    load();
  });
  loadCategories();
  load();
  setInterval(() => {
    if (!document.hidden) load();
  }, REFRESH_MS);
}

init();
