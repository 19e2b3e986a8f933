// SF's service worker (served at /sw.js, scope "/"; registered by the dashboard when browser
// notifications are set up). It only shows Web Push notifications: no fetch handler, no cache,
// so pages load exactly as without it.
//
// A push carries JSON {type, title, body, url, tag} (API.md "Web Push"). `url` is opened on a
// click only when it is a path of this site: anything else (another origin, "//host",
// "javascript:") is ignored and the click opens the directory.

const FALLBACK_PATH = "/";

function samePath(value) {
  /** `value` as a same-origin path ("/watch/7?x#y"), or null. */
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//") || value.startsWith("/\\")) {
    return null;
  }
  try {
    const url = new URL(value, self.location.origin);
    return url.origin === self.location.origin ? url.pathname + url.search + url.hash : null;
  } catch {
    return null;
  }
}

function text(value, fallback, limit) {
  return (typeof value === "string" && value.trim() ? value : fallback).slice(0, limit);
}

self.addEventListener("install", () => {
  self.skipWaiting(); // nothing cached: a new version may take over at once
});

self.addEventListener("activate", (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("push", (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch {
    payload = {};
  }
  if (!payload || typeof payload !== "object") payload = {};
  const options = {
    body: text(payload.body, "", 300),
    data: { url: samePath(payload.url) || FALLBACK_PATH },
    icon: "/static/favicon.svg",
  };
  if (typeof payload.tag === "string" && payload.tag) options.tag = payload.tag.slice(0, 100);
  // userVisibleOnly: every push shows a notification.
  event.waitUntil(self.registration.showNotification(text(payload.title, "SF", 120), options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const path = samePath(event.notification.data && event.notification.data.url) || FALLBACK_PATH;
  const target = new URL(path, self.location.origin).href;
  event.waitUntil((async () => {
    const tabs = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    // A tab showing that page already: bring it forward; else open the page in a new one.
    const open = tabs.find((tab) => tab.url === target);
    if (open) return open.focus();
    return self.clients.openWindow(target);
  })());
});
