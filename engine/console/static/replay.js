// Replay: what a changed mapping would write for stored messages, field by field (nothing written).

import { h } from "./dom.js";
import { fmtNum, fmtTime } from "./format.js";
import { alive, api, channelList } from "./session.js";
import { errorBox } from "./ui.js";

export async function pageReplay(view, _route, gen) {
  const channels = await channelList();
  if (!alive(gen)) return;
  const destination = h("select", { name: "destination" });
  const destinations = () => {
    const ch = channels.find((c) => c.name === form.elements.channel.value);
    destination.replaceChildren(h("option", { value: "" }, "the channel's mapped one"),
      ...((ch && ch.destinations) || []).map((d) => h("option", { value: d }, d)));
  };
  const out = h("div", { id: "replay-result" });
  const form = h("form", { class: "panel replay-form", id: "replay" },
    h("p", { class: "muted small" },
      "Runs a mapping over the channel's stored messages and shows what it would write, next to what the current mapping wrote. Nothing is written to any store."),
    h("div", { class: "filters" },
      h("label", { class: "field" }, "Channel",
        h("select", { name: "channel", required: true, onchange: () => destinations() }, channels.map((c) => h("option", { value: c.name }, c.name)))),
      h("label", { class: "field" }, "Destination", destination),
      h("label", { class: "field" }, "Since", h("input", { name: "since", value: "24h", placeholder: "24h or ISO time" })),
      h("label", { class: "field" }, "Limit", h("input", { name: "limit", type: "number", min: 1, max: 10000, value: 1000 })),
      h("label", { class: "field" }, "Purpose",
        h("input", { name: "purpose", required: true, placeholder: "e.g. ticket 1234: new coverage rule", autocomplete: "off" }))),
    h("label", { class: "field wide" }, "Mapping (YAML)",
      h("textarea", { name: "mapping", rows: 14, spellcheck: "false", class: "mono", required: true, placeholder: "records:\n  - target: ..." })),
    h("div", { class: "filter-buttons" }, h("button", { type: "submit", class: "btn btn-primary" }, "Run replay")),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Replaying…"));
    try {
      const result = await api("/api/replay", {
        method: "POST",
        body: {
          channel: form.elements.channel.value,
          destination: form.elements.destination.value || null,
          mapping: form.elements.mapping.value,
          since: form.elements.since.value.trim() || "24h",
          limit: Number(form.elements.limit.value) || 1000,
          purpose: form.elements.purpose.value.trim(),
        },
      });
      if (alive(gen)) out.replaceChildren(...replayResult(result));
    } catch (err) {
      if (alive(gen) && err.status !== 401) out.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Replay")), form, out);
  destinations();
}

const OUTCOME_TEXT = {
  broken: ["the new mapping fails where the current one does not", "bad"],
  fixed: ["the new mapping maps where the current one fails", "ok"],
  failing: ["both mappings fail", "warn"],
  unreadable: ["the stored message cannot be parsed (not compared)", "warn"],
  filtered: ["the channel filter drops it now (not compared)", ""],
};

/** A replayed value as the CLI shows it: "(not set)" when absent, null, or the value. */
function shownValue(change, side) {
  if (!(side in change)) return "(not set)";
  const v = change[side];
  return v === null ? "null" : typeof v === "object" ? JSON.stringify(v) : String(v);
}

/** ReplayResult.to_dict(): the window and outcomes, the per table / column summary, then each changed message. */
function replayResult(r) {
  const changed = r.messages_changed ?? (r.messages || []).length;
  const head = h("div", { class: "panel", id: "replay-summary" },
    h("p", {}, "Channel ", h("b", { class: "mono" }, r.channel), ": ", h("span", { class: "mono" }, r.mapping),
      " in place of mapping ", h("span", { class: "mono" }, r.compared_with), " (destination ", h("span", { class: "mono" }, r.destination), "). Nothing was written."),
    h("p", {}, `Received ${r.since ? fmtTime(r.since) : "from the first message"} to ${r.until ? fmtTime(r.until) : "now"}: `,
      h("b", {}, `${fmtNum(r.messages_read)} read`), `, ${fmtNum(changed)} with changes, ${fmtNum(r.messages_read - changed)} without.`),
    r.truncated ? h("p", { class: "notice" }, `Stopped at the limit of ${r.limit}: later messages of the window were not read.`) : null,
    h("ul", { class: "outcomes" }, Object.entries(r.outcomes || {}).filter(([, n]) => n).map(([k, n]) =>
      h("li", { class: (OUTCOME_TEXT[k] || [])[1] || "" }, h("b", {}, `${n} ${k}`), `: ${(OUTCOME_TEXT[k] || [k])[0]}`))),
  );
  const summary = Object.entries(r.summary || {});
  const parts = [head];
  parts.push(h("div", { class: "panel table-panel" }, h("h2", {}, "Records per table and column"),
    summary.length
      ? h("table", { class: "grid", id: "replay-table" },
        h("thead", {}, h("tr", {}, ["Table / column", "Added", "Removed", "Changed"].map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
        h("tbody", {}, summary.map(([target, t]) => [
          h("tr", { class: "group" }, h("td", { class: "mono strong" }, target), h("td", { class: "num" }, fmtNum(t.added)),
            h("td", { class: "num" }, fmtNum(t.removed)), h("td", { class: "num" }, fmtNum(t.changed))),
          Object.entries(t.fields || {}).map(([col, n]) => h("tr", {},
            h("td", { class: "mono indent" }, col), h("td"), h("td"), h("td", { class: "num" }, fmtNum(n)))),
        ])))
      : h("p", { class: "muted pad" }, "No record, warning or error differs.")));
  const positions = r.positions || {};
  for (const [key, title] of [["no_longer_read", "Populated positions only the current mapping reads"], ["newly_read", "Populated positions only the new mapping reads"]]) {
    const counted = Object.entries(positions[key] || {});
    if (counted.length) {
      parts.push(h("div", { class: "panel" }, h("h2", {}, title),
        h("div", { class: "chips" }, counted.sort().map(([p, n]) => h("span", { class: "chip mono", title: `in ${n} message(s)` }, `${p} (${n})`)))));
    }
  }
  const messages = r.messages || [];
  if (messages.length) {
    parts.push(h("h2", { class: "section" }, `Changed messages (${messages.length})`));
    parts.push(...messages.map(replayMessage));
  }
  return parts;
}

function replayMessage(m) {
  const rows = [];
  for (const rc of m.records || []) {
    const record = `${rc.target} [${Object.values(rc.key || {}).map((v) => (v === null ? "null" : String(v))).join(", ")}]`;
    const fields = rc.fields && rc.fields.length ? rc.fields : [{ field: "" }];
    fields.forEach((f, i) => {
      const source = f.old_source === f.new_source ? "" : f.old_source && f.new_source ? `${f.old_source} → ${f.new_source}` : f.old_source || f.new_source || "";
      rows.push(h("tr", { class: i === 0 ? "first" : "" },
        h("td", { class: "mono" }, i === 0 ? record : ""),
        h("td", { class: `change-${rc.change}` }, i === 0 ? rc.change : ""),
        h("td", { class: "mono" }, f.field),
        h("td", { class: "mono old" }, rc.change === "added" ? "" : shownValue(f, "old")),
        h("td", { class: "mono new" }, rc.change === "removed" ? "" : shownValue(f, "new")),
        h("td", { class: "mono dim small" }, source)));
    });
  }
  return h("div", { class: "panel replay-message", dataset: { id: m.id } },
    h("h3", {}, h("a", { href: `#/message/${m.id}`, class: "mono" }, `message ${m.id}`), " ",
      h("span", { class: "mono" }, m.message_type || ""), " · control id ", h("span", { class: "mono" }, m.control_id || ""),
      h("span", { class: "muted" }, ` · received ${fmtTime(m.received_at)}`)),
    m.old_error !== m.new_error ? h("div", { class: "alert" },
      h("div", {}, `Error with the current mapping: ${m.old_error || "(none)"}`),
      h("div", {}, `Error with the new mapping: ${m.new_error || "(none)"}`)) : null,
    rows.length ? h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["Record", "Change", "Field", "Current", "New", "Source"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : null,
    (m.warnings_added || []).length ? h("ul", { class: "warnings" }, m.warnings_added.map((w) => h("li", {}, `only with the new mapping: ${w}`))) : null,
    (m.warnings_removed || []).length ? h("ul", { class: "warnings" }, m.warnings_removed.map((w) => h("li", {}, `only with the current mapping: ${w}`))) : null,
  );
}
