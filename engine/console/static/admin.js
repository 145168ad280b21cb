// Administration: the audit log and the console's users (admin only).

import { h } from "./dom.js";
import { fmtTime } from "./format.js";
import { alive, api, navigate, state } from "./session.js";
import { askDialog, errorBox, toast } from "./ui.js";

const ROLES = ["viewer", "operator", "analyst", "admin"];

// -- audit log -------------------------------------------------------------------------------

export function pageAudit(view, route, gen) {
  const params = route.params;
  const form = h("form", { class: "filters panel", id: "audit-search" },
    h("label", { class: "field" }, "Actor", h("input", { name: "actor", value: params.get("actor") || "", autocomplete: "off" })),
    h("label", { class: "field" }, "Action", h("input", { name: "action", value: params.get("action") || "", autocomplete: "off", placeholder: "e.g. content.read" })),
    h("div", { class: "filter-buttons" }, h("button", { type: "submit", class: "btn btn-primary" }, "Filter"), h("a", { class: "btn", href: "#/audit" }, "Clear")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const k of ["actor", "action"]) if (form.elements[k].value.trim()) q.set(k, form.elements[k].value.trim());
    const target = `#/audit${q.toString() ? `?${q}` : ""}`;
    navigate(target);
  });
  const tbody = h("tbody");
  const problem = h("div");
  let nextBefore = null;
  const more = h("button", { type: "button", class: "btn", hidden: true, id: "older", onclick: () => load(nextBefore) }, "Older");
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Audit log")),
    form, problem,
    h("div", { class: "panel table-panel" }, h("table", { class: "grid", id: "audit" },
      h("thead", {}, h("tr", {}, ["At", "Actor", "Role", "Peer", "Action", "Target", "Purpose", "Outcome", "Detail"].map((t) => h("th", {}, t)))),
      tbody)),
    h("div", { class: "pager" }, more),
  );
  async function load(before) {
    try {
      const page = await api("/api/audit", { params: { actor: params.get("actor"), action: params.get("action"), before, limit: 100 } });
      if (!alive(gen)) return;
      tbody.append(...page.items.map((a) => h("tr", {},
        h("td", { class: "mono nowrap" }, fmtTime(a.at)), h("td", { class: "mono" }, a.actor || ""), h("td", {}, a.role || ""),
        h("td", { class: "mono dim" }, a.peer || ""), h("td", { class: "mono" }, a.action || ""), h("td", { class: "mono" }, a.target || ""),
        h("td", {}, a.purpose || ""), h("td", { class: a.outcome && a.outcome !== "ok" ? "bad" : "" }, a.outcome || ""),
        h("td", { class: "mono dim small" }, a.detail && Object.keys(a.detail).length ? JSON.stringify(a.detail) : ""))));
      if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No entries.")));
      nextBefore = page.next_before;
      more.hidden = nextBefore === null || nextBefore === undefined;
    } catch (err) {
      if (alive(gen) && err.status !== 401) problem.replaceChildren(errorBox(err));
    }
  }
  load(null);
}

// -- users -----------------------------------------------------------------------------------

export function pageUsers(view, _route, gen) {
  const tbody = h("tbody");
  const problem = h("div");
  const form = h("form", { class: "filters panel", id: "add-user" },
    h("label", { class: "field" }, "Name", h("input", { name: "name", required: true, autocomplete: "off" })),
    h("label", { class: "field" }, "Role",
      h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r }, r)))),
    h("label", { class: "field" }, "Password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
    h("div", { class: "filter-buttons" }, h("button", { type: "submit", class: "btn btn-primary" }, "Add user")),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = form.elements.name.value.trim();
    try {
      await api("/api/users", { method: "POST", body: { name, role: form.elements.role.value, password: form.elements.password.value } });
      toast(`user ${name} added`);
      form.reset();
      load();
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
  });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Users")),
    problem,
    h("div", { class: "panel table-panel" }, h("table", { class: "grid", id: "users" },
      h("thead", {}, h("tr", {}, ["Name", "Role", "Created", "Updated", "Disabled", ""].map((t) => h("th", {}, t)))),
      tbody)),
    h("h2", {}, "Add a user"),
    form,
  );
  async function disable(name) {
    const ok = await askDialog({ title: "Disable user", text: `Disable ${name}? Their sessions end and they can no longer sign in.`, confirm: "Disable", danger: true });
    if (!ok) return;
    try {
      await api(`/api/users/${encodeURIComponent(name)}/disable`, { method: "POST" });
      toast(`user ${name} disabled`);
      load();
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
  }
  async function load() {
    try {
      const users = await api("/api/users");
      if (!alive(gen)) return;
      const list = Array.isArray(users) ? users : users.items || [];
      tbody.replaceChildren(...list.map((u) => h("tr", { dataset: { user: u.name } },
        h("td", { class: "mono strong" }, u.name), h("td", {}, u.role),
        h("td", { class: "mono nowrap" }, fmtTime(u.created_at)), h("td", { class: "mono nowrap" }, fmtTime(u.updated_at)),
        h("td", { class: "mono nowrap" }, u.disabled_at ? fmtTime(u.disabled_at) : ""),
        h("td", {}, u.disabled_at || u.name === state.user.name ? "" : h("button", { type: "button", class: "btn btn-small", onclick: () => disable(u.name) }, "Disable")))));
    } catch (err) {
      if (alive(gen) && err.status !== 401) problem.replaceChildren(errorBox(err));
    }
  }
  load();
}
