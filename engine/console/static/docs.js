// The API's endpoints read from its own OpenAPI document: served by the engine, nothing fetched
// from elsewhere (consoles run on networks without Internet access).
const main = document.getElementById("paths");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function show() {
  const res = await fetch("/api/openapi.json");
  const doc = await res.json();
  main.textContent = "";
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const s = el("section");
      const line = el("div");
      line.append(el("span", `method ${method}`, method.toUpperCase()), el("span", "path", path));
      for (const t of op.tags || []) line.append(el("span", "tag", t));
      s.append(line);
      const text = op.description || op.summary;
      if (text) s.append(el("div", "desc", text));
      const params = (op.parameters || []).map((p) => `${p.name} (${p.in})`);
      if (op.requestBody) params.push("JSON body");
      if (params.length) s.append(el("div", "params", params.join(", ")));
      main.append(s);
    }
  }
}

show().catch((e) => { main.textContent = `could not read the API description: ${e}`; });
