// The message browser: search form, results newest first, paging, reprocessing.

import { h, setText } from "./dom.js";
import { fmtTime, localToIso, messageKind, statusBadge } from "./format.js";
import { alive, api, can, channelNames, hooks, navigate } from "./session.js";
import { askDialog, errorBox, toast } from "./ui.js";

const STATUSES = ["RECEIVED", "FILTERED", "TRANSFORMED", "QUEUED", "SENT", "ERROR"];
const FILTER_KEYS = ["channel", "status", "since", "until", "control_id", "patient", "message_type"];
// kept in the hash with the filters: a search by patient identifier is audited with its purpose
const SEARCH_KEYS = [...FILTER_KEYS, "purpose"];
const PAGE_SIZE = 50; // messages per page; #/messages?limit=N asks for another size (1 to 500)

/** The filters of the hash (#/messages?channel=adt&since=2026-11-30T10:00) as the API wants them. */
function apiFilters(params) {
  const f = {};
  for (const k of FILTER_KEYS) {
    const v = params.get(k);
    if (!v) continue;
    if (k === "patient" && !can("content")) continue;
    f[k] = k === "since" || k === "until" ? localToIso(v) : v;
  }
  return f;
}

/** The purpose to send with a search: only a search by patient identifier asks for one. */
function searchPurpose(params) {
  return params.get("patient") && can("content") ? params.get("purpose") || "" : "";
}

export async function pageMessages(view, route, gen) {
  const params = route.params;
  const names = await channelNames();
  if (!alive(gen)) return;
  const select = (name, options, label) =>
    h("label", { class: "field" }, label,
      h("select", { name }, h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: params.get(name) === o }, o))));
  const input = (name, label, type = "text", placeholder = "") =>
    h("label", { class: "field" }, label, h("input", { name, type, value: params.get(name) || "", placeholder, autocomplete: "off" }));
  const form = h("form", { class: "filters panel", id: "message-search" },
    select("channel", names, "Channel"),
    select("status", STATUSES, "Status"),
    input("since", "From", "datetime-local"),
    input("until", "To", "datetime-local"),
    input("control_id", "Control id", "text", "MSH-10"),
    can("content") ? input("patient", "Patient identifier", "text", "issuer|value") : null,
    can("content") ? input("purpose", "Purpose (with a patient)", "text", "e.g. ticket 1234") : null,
    input("message_type", "Message type", "text", "ADT or ADT^A01"),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "btn btn-primary" }, "Search"),
      h("a", { class: "btn", href: "#/messages" }, "Clear")),
  );
  form.addEventListener("input", (ev) => ev.target.setCustomValidity && ev.target.setCustomValidity(""));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const patient = form.elements.patient;
    const purpose = form.elements.purpose;
    if (patient && patient.value.trim() && !purpose.value.trim()) {
      purpose.setCustomValidity("A search by patient identifier is audited: state its purpose.");
      purpose.reportValidity();
      return;
    }
    const q = new URLSearchParams();
    for (const k of SEARCH_KEYS) {
      const el = form.elements[k];
      if (el && el.value.trim()) q.set(k, el.value.trim());
    }
    if (params.get("limit")) q.set("limit", params.get("limit"));
    const target = `#/messages${q.toString() ? `?${q}` : ""}`;
    navigate(target);
  });

  const filters = apiFilters(params);
  const pageSize = Math.min(500, Math.max(1, Number(params.get("limit")) || PAGE_SIZE));
  const selected = new Set();
  const items = [];
  let nextBefore = null;
  const tbody = h("tbody");
  const count = h("span", { class: "muted", id: "result-count" });
  const more = h("button", { type: "button", class: "btn", id: "older", hidden: true, onclick: () => load(nextBefore) }, "Older");
  const problem = h("div");
  const selectAll = h("input", { type: "checkbox", "aria-label": "select all shown", onchange: () => {
    for (const m of items) selectAll.checked ? selected.add(m.id) : selected.delete(m.id);
    for (const box of tbody.querySelectorAll("input[type=checkbox]")) box.checked = selectAll.checked;
    paintSelection();
  } });
  const reprocessSelected = h("button", { type: "button", class: "btn", id: "reprocess-selected", disabled: true, onclick: doReprocessSelected }, "Reprocess selected");
  const reprocessAll = h("button", { type: "button", class: "btn", id: "reprocess-all", onclick: doReprocessAll }, "Reprocess all results…");
  const showPatient = can("content");
  const head = ["", "ID", "Received", "Channel", "Type", "Control id", "Sender"]
    .concat(showPatient ? ["Patient"] : [], ["Status", "Warn", "Error"]);
  const table = h("table", { class: "grid messages", id: "messages" },
    h("thead", {}, h("tr", {}, head.map((t, i) => h("th", { class: t === "ID" || t === "Warn" ? "num" : "" }, i === 0 ? selectAll : t)))),
    tbody);
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Messages"), count),
    form, problem,
    h("div", { class: "toolbar", hidden: !can("reprocess") }, reprocessSelected, reprocessAll),
    h("div", { class: "panel table-panel" }, table),
    h("div", { class: "pager" }, more),
  );

  function paintSelection() {
    reprocessSelected.disabled = selected.size === 0;
    reprocessSelected.textContent = selected.size ? `Reprocess selected (${selected.size})` : "Reprocess selected";
    selectAll.checked = items.length > 0 && selected.size === items.length;
  }

  function row(m) {
    const box = h("input", { type: "checkbox", "aria-label": `select message ${m.id}`, checked: selected.has(m.id) });
    box.addEventListener("click", (ev) => ev.stopPropagation());
    box.addEventListener("change", () => {
      box.checked ? selected.add(m.id) : selected.delete(m.id);
      paintSelection();
    });
    const tr = h("tr", { class: "clickable", dataset: { id: m.id }, onclick: () => (location.hash = `#/message/${m.id}`) },
      h("td", {}, box),
      h("td", { class: "num mono" }, h("a", { href: `#/message/${m.id}` }, String(m.id))),
      h("td", { class: "mono nowrap", title: m.received_at || "" }, fmtTime(m.received_at)),
      h("td", { class: "mono" }, m.channel),
      h("td", { class: "mono" }, messageKind(m)),
      h("td", { class: "mono", dataset: { col: "control_id" } }, m.control_id || ""),
      h("td", { class: "dim" }, [m.sending_app, m.sending_facility].filter(Boolean).join(" / ")),
      showPatient ? h("td", { class: "mono" }, m.patient || "") : null,
      h("td", { dataset: { col: "status" } }, statusBadge(m.status)),
      h("td", { class: `num ${m.warnings ? "warn" : ""}`, dataset: { col: "warnings" } }, m.warnings ? String(m.warnings) : ""),
      h("td", { class: "error-text", title: m.error || "" }, m.error || ""),
    );
    return tr;
  }

  async function load(before) {
    more.disabled = true;
    try {
      const page = await api("/api/messages", { params: { ...filters, purpose: searchPurpose(params), before, limit: pageSize } });
      if (!alive(gen)) return;
      items.push(...page.items);
      tbody.append(...page.items.map(row));
      nextBefore = page.next_before;
      more.hidden = nextBefore === null || nextBefore === undefined;
      setText(count, items.length ? `${items.length} shown${more.hidden ? "" : ", more older"}` : "no messages match");
      reprocessAll.disabled = items.length === 0 || Object.keys(filters).length === 0;
      reprocessAll.title = Object.keys(filters).length ? "" : "narrow the search first: reprocessing everything is not one click";
      paintSelection();
    } catch (err) {
      if (alive(gen) && err.status !== 401) problem.replaceChildren(errorBox(err));
    } finally {
      more.disabled = false;
    }
  }

  async function doReprocessSelected() {
    const ids = [...selected];
    const ok = await askDialog({
      title: "Reprocess messages",
      text: `Run ${ids.length} selected message${ids.length === 1 ? "" : "s"} through the channel again?`,
      confirm: "Reprocess",
    });
    if (!ok) return;
    let total = 0;
    for (const id of ids) {
      try {
        total += (await api(`/api/messages/${id}/reprocess`, { method: "POST" })).count || 0;
      } catch (err) {
        if (err.status === 401) return;
        toast(`message ${id}: ${err.message}`, "error");
      }
    }
    toast(`${total} message${total === 1 ? "" : "s"} queued for reprocessing`);
    if (alive(gen)) setTimeout(() => alive(gen) && hooks.render(), 1000);
  }

  async function doReprocessAll() {
    const described = Object.entries(filters).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ") || "no filter: every message";
    const answer = await askDialog({
      title: "Reprocess all results",
      text: [`Every message matching the search (${described}) runs through its channel again, not only the ${items.length} shown.`],
      fields: [{ name: "purpose", label: "Reason", required: true, placeholder: "e.g. mapping fixed, ticket 1234" }],
      confirm: "Reprocess all",
      danger: true,
    });
    if (!answer) return;
    try {
      const result = await api("/api/messages/reprocess", { method: "POST", body: { ...filters, purpose: answer.purpose } });
      toast(`${result.count} message${result.count === 1 ? "" : "s"} queued for reprocessing`);
      if (alive(gen)) setTimeout(() => alive(gen) && hooks.render(), 1000);
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
  }

  load(null);
}
