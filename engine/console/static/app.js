// The operator console: one page on the engine's admin API (/api/...), no framework, no build step
// and no network beyond the engine itself (clinics run it offline). Everything put into the DOM
// goes through textContent / createElement: message metadata is data from outside, never markup.
//
// This module is the shell: sign-in, navigation and the hash routes (#/channels, #/messages,
// #/message/42, #/replay, #/audit, #/users); each page is its own module.

import { pageAudit, pageUsers } from "./admin.js";
import { pageChannels } from "./channels.js";
import { $, h } from "./dom.js";
import { pageMessage } from "./message.js";
import { pageMessages } from "./messages.js";
import { pageReplay } from "./replay.js";
import { alive, api, can, hooks, signedIn, state } from "./session.js";
import { errorBox } from "./ui.js";

const ROUTES = {
  channels: { label: "Channels", need: "stats", render: pageChannels },
  messages: { label: "Messages", need: "messages", render: pageMessages },
  message: { label: "Message", need: "messages", render: pageMessage, hidden: true },
  replay: { label: "Replay", need: "replay", render: pageReplay },
  audit: { label: "Audit", need: "audit", render: pageAudit },
  users: { label: "Users", need: "users", render: pageUsers },
};

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { name: parts[0] || "channels", arg: parts[1] ? decodeURIComponent(parts[1]) : null, params: new URLSearchParams(q) };
}

function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function renderShell() {
  const route = parseHash().name === "message" ? "messages" : parseHash().name;
  $("#nav").replaceChildren(
    ...Object.entries(ROUTES)
      .filter(([, r]) => !r.hidden && can(r.need))
      .map(([name, r]) => h("a", { href: `#/${name}`, class: name === route ? "active" : "", dataset: { nav: name } }, r.label)),
  );
  $("#who").replaceChildren(
    h("span", { class: "user" }, state.user.name),
    h("span", { class: "role" }, state.user.role),
    h("button", { type: "button", class: "btn btn-quiet", id: "signout", onclick: signOut }, "Sign out"),
  );
}

function render() {
  stopTimer();
  state.gen += 1;
  if (!state.user) return renderLogin();
  renderShell();
  const route = parseHash();
  const page = ROUTES[route.name];
  const view = $("#view");
  if (!page) {
    view.replaceChildren(h("div", { class: "notice" }, "No such page. ", h("a", { href: "#/channels" }, "Channels")));
    return;
  }
  document.title = `${page.label} · Engine console`;
  if (!can(page.need)) {
    view.replaceChildren(
      h("div", { class: "notice not-allowed", role: "alert" },
        `Not allowed: the ${state.user.role} role cannot open ${page.label}.`),
    );
    return;
  }
  view.replaceChildren();
  const gen = state.gen;
  Promise.resolve(page.render(view, route, gen)).catch((err) => {
    // a 401 has already brought the sign-in form back; anything else is said on the page
    if (err.status !== 401 && alive(gen)) view.prepend(errorBox(err));
  });
}

function sessionLost() {
  if (!state.user) return;
  state.user = null;
  state.expired = true;
  render();
}

function renderLogin(message) {
  stopTimer();
  $("#nav").replaceChildren();
  $("#who").replaceChildren();
  document.title = "Sign in · Engine console";
  const error = h("p", { class: "alert", role: "alert", hidden: true, id: "login-error" });
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Sign in"),
    state.expired ? h("p", { class: "notice", id: "expired" }, "Your session expired; sign in again.") : null,
    message ? h("p", { class: "notice" }, message) : null,
    h("label", { class: "field" }, "Name", h("input", { name: "name", autocomplete: "username", required: true })),
    h("label", { class: "field" }, "Password",
      h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    error,
    h("button", { type: "submit", class: "btn btn-primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    error.hidden = true;
    try {
      const me = await api("/api/login", {
        method: "POST",
        body: { name: form.elements.name.value.trim(), password: form.elements.password.value },
      });
      signedIn(me);
      try {
        signedIn(await api("/api/me")); // its "can" list is what the API enforces
      } catch {
        // the role's usual rights from the sign-in answer stand
      }
      state.expired = false;
      render();
    } catch (err) {
      error.textContent = err.status === 401 ? "Wrong name or password."
        : err.status === 429 ? "Too many failed attempts; wait a few minutes and try again." : err.message;
      error.hidden = false;
      form.elements.password.value = "";
      form.elements.password.focus();
    } finally {
      button.disabled = false;
    }
  });
  $("#view").replaceChildren(form);
  form.elements.name.focus();
}

async function signOut() {
  try {
    await api("/api/logout", { method: "POST" });
  } catch {
    // signed out either way: the form comes back
  }
  state.user = null;
  state.expired = false;
  history.replaceState(null, "", "#/channels"); // the next person starts on the overview
  renderLogin("Signed out.");
}

async function start() {
  window.addEventListener("hashchange", () => state.user && render());
  try {
    signedIn(await api("/api/me"));
  } catch {
    state.user = null;
  }
  render();
}

hooks.render = render;
hooks.sessionLost = sessionLost;
start();
