// The REST API as API.md describes it, for the pages of the web front.
//
// Tokens: the access token (15 min) is kept in localStorage so that a page load or a second
// tab does not need a refresh; the refresh token never is. It lives in the HttpOnly
// `sf_refresh` cookie (path /api), and a refresh sends the readable `sf_csrf` cookie back as
// X-CSRF-Token (double submit). Refresh tokens rotate and a reused one revokes the session, so
// tabs refresh one at a time (Web Locks) and a tab that waited takes the token another one got.
// Tokens never go into a URL: the live WebSocket is opened with a one-time ticket.

const SESSION_KEY = "sf.session";
const EARLY_REFRESH_MS = 30_000;

export class ApiError extends Error {
  /** An answer in the API's error shape ({"error": {code, message, fields}}). */
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "internal_error";
    this.fields = error.fields || {};
  }
}

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

export function session() {
  /** The stored session ({access_token, expires_at, user}) or null. */
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return value && typeof value.access_token === "string" ? value : null;
  } catch {
    return null;
  }
}

export function currentUser() {
  const stored = session();
  return stored ? stored.user : null;
}

function storeTokens(pair) {
  const value = {
    access_token: pair.access_token,
    expires_at: Date.now() + pair.expires_in * 1000,
    user: pair.user,
  };
  localStorage.setItem(SESSION_KEY, JSON.stringify(value));
  return value;
}

export function updateStoredUser(user) {
  const stored = session();
  if (stored) localStorage.setItem(SESSION_KEY, JSON.stringify({ ...stored, user }));
}

function forget() {
  localStorage.removeItem(SESSION_KEY);
}

export function forgetSession() {
  /** Forget the session here when the server already ended it (a deleted account, a password
   * reset): no logout call to fail, and no refresh attempt later with the dead cookie. */
  forget();
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `sf_csrf=; Max-Age=0; path=/; SameSite=Strict${secure}`;
}

function canRefresh() {
  return readCookie("sf_csrf") !== "";
}

async function parse(response) {
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || {});
  }
  return body;
}

async function refreshOnce(staleToken) {
  // Inside the lock: another tab may have refreshed while we waited.
  const stored = session();
  if (stored && stored.access_token !== staleToken && stored.expires_at - Date.now() > EARLY_REFRESH_MS) {
    return stored.access_token;
  }
  if (!canRefresh()) {
    forget();
    return null;
  }
  const response = await fetch("/api/auth/refresh-token", {
    method: "GET",
    credentials: "same-origin",
    headers: { "X-CSRF-Token": readCookie("sf_csrf"), Accept: "application/json" },
  });
  if (!response.ok) {
    forget();
    return null;
  }
  return storeTokens(await response.json()).access_token;
}

async function refresh(staleToken) {
  if (navigator.locks) {
    return navigator.locks.request("sf-refresh", () => refreshOnce(staleToken));
  }
  return refreshOnce(staleToken); // no Web Locks (a plain-HTTP page on another host): one tab's luck
}

async function accessToken() {
  /** A valid access token, refreshed when close to expiry; null when signed out. */
  const stored = session();
  if (stored && stored.expires_at - Date.now() > EARLY_REFRESH_MS) return stored.access_token;
  if (!stored && !canRefresh()) return null;
  return refresh(stored ? stored.access_token : null);
}

export async function api(method, path, body = undefined, { auth = "optional" } = {}) {
  /** Call the API; `auth`: "required" (throws 401 when signed out), "optional", or "none". */
  const send = async (token) => {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  let token = auth === "none" ? null : await accessToken();
  if (!token && auth === "required") {
    throw new ApiError(401, { code: "unauthorized", message: "Please sign in" });
  }
  let response = await send(token);
  if (response.status === 401 && token) {
    // Revoked or expired early (clock skew): one refresh, one retry.
    token = await refresh(token);
    if (token || auth !== "required") response = await send(token);
  }
  return parse(response);
}

export async function signIn(login, password, { restore = false } = {}) {
  /** `restore`: keep an account deleted and waiting for erasure (cancels the erasure). */
  const field = login.includes("@") ? "email" : "username";
  const body = { [field]: login, password };
  if (restore) body.restore = true;
  const pair = await api("POST", "/api/auth/login", body, { auth: "none" });
  return storeTokens(pair).user;
}

export function isErasureRefusal(error) {
  /** A sign-in refused because the account is deleted and waits for its erasure. */
  return error instanceof ApiError && error.status >= 400 && error.status < 500
    && /erasure|erased/i.test(error.message);
}

export async function privacyPolicy() {
  /** The privacy policy in force: {version, effective_at, text}. */
  return api("GET", "/api/legal/privacy-policy", undefined, { auth: "none" });
}

export async function signUp(username, email, password, acceptPrivacyPolicy) {
  /** `acceptPrivacyPolicy`: the version of the policy the user accepted (the current one). */
  const pair = await api("POST", "/api/auth/register",
    { username, email, password, accept_privacy_policy: acceptPrivacyPolicy }, { auth: "none" });
  return storeTokens(pair).user;
}

export async function signOut() {
  try {
    if (session() || canRefresh()) await api("POST", "/api/auth/logout", undefined, { auth: "required" });
  } catch {
    // Already signed out on the server: forgetting locally is all that is left.
  } finally {
    forget();
  }
}

export async function liveSocketUrl(streamId) {
  /** The live WebSocket URL (viewer counts, stream state and chat, one per tab): anonymous
   * (reads only), or with a one-time ticket when signed in (may chat). */
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/ws/streams/${encodeURIComponent(streamId)}/live`);
  if (currentUser()) {
    try {
      const { ticket } = await api("POST", "/api/ws/ticket", undefined, { auth: "required" });
      url.searchParams.set("ticket", ticket);
    } catch {
      // Signed out meanwhile: watch anonymously.
    }
  }
  return url.toString();
}

export async function notificationSocketUrl() {
  /** The URL of `/ws/notifications` with a fresh one-time ticket (a ticket works once: every
   * reconnect needs a new one). Throws when signed out. */
  const { ticket } = await api("POST", "/api/ws/ticket", undefined, { auth: "required" });
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/ws/notifications`);
  url.searchParams.set("ticket", ticket);
  return url.toString();
}

// This browser's Web Push subscription as SF knows it: {id, endpoint, user} (the subscription
// id to DELETE, and the account it was made for: a shared browser has several).
const PUSH_KEY = "sf.push";

export function storedPush() {
  try {
    const value = JSON.parse(localStorage.getItem(PUSH_KEY) || "null");
    return value && Number.isSafeInteger(value.id) ? value : null;
  } catch {
    return null;
  }
}

export function rememberPush(id, endpoint) {
  const user = currentUser();
  localStorage.setItem(PUSH_KEY, JSON.stringify({ id, endpoint, user: user ? user.id : null }));
}

export async function unsubscribePush() {
  /** Stop Web Push to this browser: the subscription deleted on the server (when it is this
   * account's), then in the browser (a push service then answers 410 for it, which makes SF
   * drop it whichever account it moved to). */
  const stored = storedPush();
  const user = currentUser();
  localStorage.removeItem(PUSH_KEY);
  if (stored && user && stored.user === user.id) {
    try {
      await api("DELETE", `/api/notifications/push/subscriptions/${stored.id}`, undefined, { auth: "required" });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }
  if ("serviceWorker" in navigator) {
    const registration = await navigator.serviceWorker.getRegistration("/");
    const subscription = registration && registration.pushManager
      ? await registration.pushManager.getSubscription() : null;
    if (subscription) await subscription.unsubscribe();
  }
}
