// Sign in and sign up. On success the access token is stored (see api.js) and the browser
// goes back to where it came from (`?next=`, same-origin paths only) or to the dashboard.

import { isErasureRefusal, privacyPolicy, signIn, signUp } from "/static/js/api.js";
import { $, onSubmit, renderHeader, safeNext } from "/static/js/ui.js";

const query = new URLSearchParams(location.search);
const next = safeNext(query.get("next"), "/dashboard");

function notice(text) {
  const box = $("#login-notice");
  box.textContent = text;
  box.hidden = false;
}

function offerRestore() {
  /** A deleted account can still be kept until its erasure: by signing in with restore. */
  $("#restore-row").hidden = false;
}

function selectTab(name) {
  for (const id of ["sign-in", "sign-up"]) {
    const selected = id === name;
    $(`#tab-${id}`).setAttribute("aria-selected", String(selected));
    $(`#${id}`).hidden = !selected;
  }
  $(`#${name} input`).focus();
}

function handle(form, submit) {
  onSubmit(form, async (data) => {
    try {
      await submit(data);
    } catch (error) {
      if (isErasureRefusal(error)) offerRestore();
      throw error;
    }
    location.assign(next);
  });
}

renderHeader();
$("#tab-sign-in").addEventListener("click", () => selectTab("sign-in"));
$("#tab-sign-up").addEventListener("click", () => selectTab("sign-up"));
handle($("#sign-in"), (data) => signIn(String(data.get("login")).trim(), String(data.get("password")),
  { restore: data.get("restore") === "on" }));
if (query.get("password") === "changed") notice("Your password is changed: sign in with the new one.");
if (query.has("deleted")) {
  // Set by the dashboard right after the deletion: when the erasure happens (a date, no secret).
  const eraseAfter = new Date(query.get("deleted"));
  const when = Number.isNaN(eraseAfter.getTime()) ? "when its grace period ends" : `after ${eraseAfter.toLocaleString()}`;
  notice(`Your account is deleted and gone from every public place. Its personal data is erased ${when}. `
    + "Until then you can keep it: sign in with “Restore my account” ticked.");
  offerRestore();
}
// The policy the checkbox accepts: fetched once, its text shown as text (never as HTML).
const policy = privacyPolicy().then((current) => {
  $("#policy-version").textContent = `(version ${current.version})`;
  $("#policy-text").textContent = current.text;
  return current;
}, (error) => {
  $("#policy-text").textContent = "The privacy policy could not be loaded; reload the page.";
  throw error;
});
policy.catch(() => {});
handle($("#sign-up"), async (data) => signUp(String(data.get("username")).trim(), String(data.get("email")).trim(),
  String(data.get("password")), (await policy).version));
if (location.hash === "#sign-up") selectTab("sign-up");
