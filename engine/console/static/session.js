// Who is signed in, what they may do, and the calls to the engine's API on their behalf.

// What each role may do, as engine.console.ROLE_CAN says; /api/me's "can" list wins when given.
const ROLE_CAN = {
  viewer: ["stats"],
  operator: ["stats", "messages", "reprocess", "pause"],
  analyst: ["stats", "messages", "reprocess", "pause", "content", "replay"],
  admin: ["stats", "messages", "reprocess", "pause", "content", "replay", "users", "audit"],
};

export const state = {
  user: null, // {name, role, can: [capability]} once signed in
  expired: false, // set when a call answered 401: the sign-in form says why it is back
  gen: 0, // bumped on every page change: answers for an older page are dropped
  timer: null,
};

/** Set by app.js: repaint the current page; bring the sign-in form back after a 401. */
export const hooks = { render: () => {}, sessionLost: () => {} };

/** True while the page that started some work is still the one shown. */
export const alive = (gen) => gen === state.gen;

/** Go to `hash`; when it is already the current one, paint the page again (a search run twice). */
export function navigate(hash) {
  if (location.hash === hash) hooks.render();
  else location.hash = hash;
}

class ApiError extends Error {
  constructor(status, detail, problems = []) {
    super(detail);
    this.status = status;
    this.problems = problems; // e.g. an invalid mapping's problems, each with its line
  }
}

function detailText(detail) {
  if (!detail) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return JSON.stringify(detail);
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** One call to the engine's API. A 401 (other than a failed sign-in) means the session is gone. */
export async function api(path, { method = "GET", body, params } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", "X-Requested-With": "engine-console" },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path + query(params), init);
  } catch (err) {
    throw new ApiError(0, `The engine does not answer (${err.message}).`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 300) };
    }
  }
  if (res.status === 401 && path !== "/api/login") {
    hooks.sessionLost();
    throw new ApiError(401, "session expired");
  }
  if (!res.ok) {
    const problems = data && Array.isArray(data.problems) ? data.problems.map(String) : [];
    throw new ApiError(res.status, detailText(data && data.detail) || res.statusText, problems);
  }
  return data;
}

/** Whether the signed-in user may do `what` (stats, messages, reprocess, pause, content, replay, users, audit). */
export const can = (what) => !!state.user && state.user.can.includes(what);

export function signedIn(me) {
  state.user = { name: me.name, role: me.role, can: Array.isArray(me.can) ? me.can : ROLE_CAN[me.role] || [] };
}

/** The channels (for the selects); an empty list when they cannot be read (the page says the rest). */
export async function channelList() {
  try {
    return await api("/api/channels");
  } catch (err) {
    if (err.status === 401) throw err;
    return [];
  }
}

export const channelNames = async () => (await channelList()).map((c) => c.name);
