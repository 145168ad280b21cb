// One message: metadata, deliveries, warnings, unmapped positions; content and mapping output on purpose.

import { h } from "./dom.js";
import { fmtTime, messageKind, statusBadge } from "./format.js";
import { alive, api, can } from "./session.js";
import { askDialog, askPurpose, errorBox, toast } from "./ui.js";

export async function pageMessage(view, route, gen) {
  const id = route.arg;
  const problem = h("div");
  const body = h("div");
  const extra = h("div", { id: "extra" });
  view.append(
    h("div", { class: "page-head" }, h("a", { href: "#/messages", class: "back" }, "← Messages"), h("h1", {}, `Message ${id}`)),
    problem, body, extra,
  );

  async function load() {
    let m;
    try {
      m = await api(`/api/messages/${encodeURIComponent(id)}`);
    } catch (err) {
      if (alive(gen) && err.status !== 401) problem.replaceChildren(errorBox(err));
      return;
    }
    if (!alive(gen)) return;
    problem.replaceChildren();
    body.replaceChildren(...detail(m));
  }

  function detail(m) {
    const meta = [
      ["Status", statusBadge(m.status)],
      ["Channel", m.channel],
      ["Received", fmtTime(m.received_at)],
      ["Updated", fmtTime(m.updated_at)],
      ["Type", messageKind(m)],
      ["Control id", m.control_id],
      ["Sending app", m.sending_app],
      ["Sending facility", m.sending_facility],
      ["Peer", m.peer],
    ];
    if ("patient" in m) meta.push(["Patient", m.patient]);
    const actions = h("div", { class: "toolbar" },
      can("reprocess") ? h("button", { type: "button", class: "btn", id: "reprocess", onclick: () => reprocess() }, "Reprocess") : null,
      can("content") ? h("button", { type: "button", class: "btn", id: "show-content", onclick: showContent }, "Show content") : null,
      can("content") ? h("button", { type: "button", class: "btn", id: "show-mapped", onclick: showMapped }, "Show mapping output") : null,
    );
    const deliveries = m.deliveries || [];
    const warnings = m.warnings || [];
    const unmapped = m.unmapped || [];
    return [
      actions,
      h("div", { class: "panel" },
        h("dl", { class: "meta", id: "meta" },
          meta.map(([k, v]) => [h("dt", {}, k), h("dd", { class: k === "Status" ? "" : "mono", dataset: { field: k.toLowerCase().replace(" ", "_") } }, v ?? "")])),
        m.error ? h("div", { class: "alert", id: "message-error" }, m.error) : null),
      h("div", { class: "panel" }, h("h2", {}, "Deliveries"),
        deliveries.length
          ? h("table", { class: "grid", id: "deliveries" },
            h("thead", {}, h("tr", {}, ["Destination", "Status", "Attempts", "Result", "Error", "Updated"].map((t) => h("th", {}, t)))),
            h("tbody", {}, deliveries.map((d) => h("tr", {},
              h("td", { class: "mono" }, d.destination), h("td", {}, statusBadge(d.status)), h("td", { class: "num" }, String(d.attempts ?? "")),
              h("td", { class: "mono" }, d.result || ""), h("td", { class: "error-text" }, d.error || ""), h("td", { class: "mono nowrap" }, fmtTime(d.updated_at))))))
          : h("p", { class: "muted" }, "No deliveries (filtered, or not processed yet).")),
      h("div", { class: "panel" }, h("h2", {}, `Warnings (${warnings.length})`),
        warnings.length ? h("ul", { class: "warnings", id: "warnings" }, warnings.map((w) => h("li", {}, w))) : h("p", { class: "muted" }, "None.")),
      h("div", { class: "panel" }, h("h2", {}, `Unmapped positions (${unmapped.length})`),
        h("p", { class: "muted small" }, "Positions the message carried that no mapping read (positions only, never values)."),
        unmapped.length ? h("div", { class: "chips", id: "unmapped" }, unmapped.map((u) => h("span", { class: "chip mono" }, u))) : h("p", { class: "muted" }, "None.")),
    ];
  }

  async function reprocess() {
    const ok = await askDialog({ title: "Reprocess", text: `Run message ${id} through its channel again?`, confirm: "Reprocess" });
    if (!ok) return;
    try {
      const r = await api(`/api/messages/${encodeURIComponent(id)}/reprocess`, { method: "POST" });
      toast(`Message ${id} queued for reprocessing (${r.count})`);
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
      return;
    }
    // show the new status as the engine works through it
    for (const wait of [0, 700, 2000]) {
      await new Promise((r) => setTimeout(r, wait));
      if (!alive(gen)) return;
      await load();
    }
  }

  async function showContent() {
    const purpose = await askPurpose("Show content");
    if (!purpose) return;
    try {
      const r = await api(`/api/messages/${encodeURIComponent(id)}/content`, { params: { purpose } });
      if (!alive(gen)) return;
      const text = String(r.content ?? "").replace(/\r\n?/g, "\n");
      extra.replaceChildren(h("div", { class: "panel" },
        h("h2", {}, "Content", h("span", { class: "muted small" }, ` · read for “${purpose}”, recorded in the audit log`)),
        h("pre", { class: "content", id: "content" }, text)));
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
  }

  async function showMapped() {
    const purpose = await askPurpose("Show mapping output");
    if (!purpose) return;
    try {
      const r = await api(`/api/messages/${encodeURIComponent(id)}/mapped`, { params: { purpose } });
      if (!alive(gen)) return;
      extra.replaceChildren(h("div", { class: "panel", id: "mapped" },
        h("h2", {}, "Mapping output", h("span", { class: "muted small" }, ` · read for “${purpose}”, recorded in the audit log`)),
        (r.destinations || []).map(mappedDestination)));
    } catch (err) {
      if (err.status !== 401) toast(err.message, "error");
    }
  }

  await load();
}

function mappedDestination(d) {
  const records = d.records || [];
  return h("section", { class: "mapped-dest" },
    h("h3", {}, h("span", { class: "mono" }, d.destination), d.mapping ? h("span", { class: "muted" }, ` · mapping ${d.mapping}`) : null),
    d.error ? h("div", { class: "alert" }, d.error) : null,
    (d.warnings || []).length ? h("ul", { class: "warnings" }, d.warnings.map((w) => h("li", {}, w))) : null,
    records.length
      ? h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Target", "Op", "Key", "Fields"].map((t) => h("th", {}, t)))),
        h("tbody", {}, records.map((rec) => h("tr", {},
          h("td", { class: "mono" }, rec.target), h("td", { class: "mono" }, rec.op || ""),
          h("td", { class: "mono" }, fieldsText(rec.key)), h("td", { class: "mono pre" }, fieldsText(rec.fields))))))
      : d.error ? null : h("p", { class: "muted" }, "No records."),
  );
}

/** A record's key or fields as "name = value" lines (a list or scalar as it comes). */
function fieldsText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  if (Array.isArray(v)) return v.map(fieldsText).join(", ");
  return Object.entries(v).map(([k, x]) => `${k} = ${x !== null && typeof x === "object" ? JSON.stringify(x) : x ?? "∅"}`).join("\n");
}
