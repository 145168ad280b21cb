// DOM helpers: every node is built with createElement / textContent, never from markup.

/** An element with properties, attributes, listeners (on*) and children (strings become text). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  el.append(...flat(children));
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element: attributes only, children as for h(). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  el.append(...flat(children));
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" || k === "checked" || k === "disabled" || k === "hidden") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function flat(children) {
  const out = [];
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    out.push(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return out;
}

/** Sets a node's text only when it changed: the 5 s refresh repaints nothing that stayed the same. */
export function setText(el, text) {
  const t = String(text ?? "");
  if (el.textContent !== t) el.textContent = t;
}

export const $ = (sel, root = document) => root.querySelector(sel);
