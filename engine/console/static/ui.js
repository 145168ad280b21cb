// Toasts, error boxes and the modal dialog (confirmations, a purpose to state).

import { $, h } from "./dom.js";

export function toast(text, kind = "ok") {
  const box = $("#toasts");
  const t = h("div", { class: `toast toast-${kind}` }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
}

export function errorBox(err) {
  const problems = (err && err.problems) || [];
  return h("div", { class: "alert", role: "alert" }, err instanceof Error ? err.message : String(err),
    problems.length ? h("ul", { class: "problems" }, problems.map((p) => h("li", { class: "mono" }, p))) : null);
}

/**
 * A modal form: resolves with the form's values (an object), or null when cancelled.
 * fields: [{name, label, type, required, value, placeholder}]
 */
export function askDialog({ title, text, fields = [], confirm = "OK", danger = false }) {
  const dialog = $("#dialog");
  return new Promise((resolve) => {
    const inputs = fields.map((f) =>
      h("label", { class: "field" }, f.label,
        f.type === "textarea"
          ? h("textarea", { name: f.name, required: f.required, rows: 4, placeholder: f.placeholder || "" })
          : h("input", {
            name: f.name, type: f.type || "text", required: f.required, value: f.value || "",
            placeholder: f.placeholder || "", autocomplete: "off",
          })),
    );
    const form = h("form", { method: "dialog", class: "dialog-form" },
      h("h2", { id: "dialog-title" }, title),
      text ? (Array.isArray(text) ? text.map((t) => h("p", {}, t)) : h("p", {}, text)) : null,
      inputs,
      h("div", { class: "dialog-buttons" },
        h("button", { type: "button", class: "btn", value: "cancel", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "submit", class: danger ? "btn btn-danger" : "btn btn-primary", value: "ok" }, confirm)),
    );
    form.addEventListener("submit", (ev) => {
      for (const input of form.querySelectorAll("[required]")) {
        if (!input.value.trim()) {
          ev.preventDefault();
          input.setCustomValidity("Required");
          input.reportValidity();
          return;
        }
      }
    });
    form.addEventListener("input", (ev) => ev.target.setCustomValidity(""));
    dialog.replaceChildren(form);
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      if (dialog.returnValue !== "ok") return resolve(null);
      const values = {};
      for (const f of fields) values[f.name] = form.elements[f.name].value.trim();
      resolve(values);
    });
    dialog.returnValue = "";
    dialog.showModal();
    const first = form.querySelector("input, textarea");
    if (first) first.focus();
  });
}

export async function askPurpose(what) {
  const answer = await askDialog({
    title: what,
    text: "Reading patient data is recorded in the audit log with your name and the purpose.",
    fields: [{ name: "purpose", label: "Purpose", required: true, placeholder: "e.g. ticket 1234" }],
    confirm: "Show",
  });
  return answer && answer.purpose;
}
