"""What each entry of a Bundle asks in its ``request`` (FHIR R4, http.html#transaction):

- ``POST <Type>`` creates; with ``ifNoneExist`` (``identifier=<system>|<value>`` or ``_id``)
  nothing is created when the condition finds the resource: the entry answers ``200 OK`` with
  where it is stored, and a transaction leaves that entry out of what it applies.
- ``PUT <Type>/<id>`` updates (or creates under that id): the resource's id must be the URL's,
  ``ifMatch`` must name the stored version (412), and an id that names another patient than the
  identifier does is refused (409), as ``PUT /fhir/<Type>/<id>`` is.
- ``PUT <Type>?identifier=<system>|<value>`` updates the one resource the condition finds
  (under its id) or creates it.
- Any other method (DELETE, GET, PATCH, HEAD) is refused: this endpoint deletes and reads
  nothing through a Bundle. An entry without ``request`` is a create (what clients that build
  "transaction" Bundles by hand mean).

A transaction is planned whole before anything is stored (:func:`plan`), so that a refusal in
any entry stores nothing; each refusal is located under its entry (``Bundle.entry[2].request.url``).
An entry a conditional create leaves out is still what the other entries' references to its
``fullUrl`` mean: they are pointed at the resource found (:func:`repoint`), as R4's transaction
rules ask, and the engine then adds that resource's identifier to them, as to any reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.channels.fhir_conditional import criteria
from engine.formats.fhir_outcome import Issue, Refused


@dataclass
class Request:
    method: str  # POST or PUT
    rid: str | None  # PUT <Type>/<id>: the id
    condition: str | None  # ifNoneExist (POST), or the query of a conditional PUT
    if_match: str | None


@dataclass
class Planned:
    """One transaction entry: whether it is applied, and its answer."""

    apply: bool
    status: str
    location: str
    given_id: bool = False  # a conditional PUT's resource took the id of the one found


PUT_URL = "a PUT entry's URL is <Type>/<id> or <Type>?<condition>"


def _bad(text: str, where: str) -> Refused:
    return Refused(400, [Issue("invalid", text, [where])])


def request_of(entry: dict[str, Any], n: int) -> Request:
    """The entry's request, checked against its resource; Refused 400 located in the entry."""
    resource = entry["resource"]
    rtype = resource.get("resourceType")
    req = entry.get("request") or {}
    at = f"Bundle.entry[{n}].request"
    method = str(req.get("method") or "POST").upper()
    if method not in ("POST", "PUT"):
        text = f"{method} is not taken in a Bundle here: entries create (POST) or update (PUT)"
        raise Refused(400, [Issue("not-supported", text, [f"{at}.method"])])
    url = str(req.get("url") or rtype).split("/fhir/", 1)[-1].lstrip("/")
    path, _, query = url.partition("?")
    kind, _, rid = path.partition("/")
    if kind != rtype:
        raise Refused(
            400, [Issue("invalid", f"the request's URL names {kind or 'no type'}, not {rtype}", [f"{at}.url"])]
        )
    if method == "POST":
        if rid or query:
            raise _bad("a POST entry's URL is the resource type alone", f"{at}.url")
        return Request("POST", None, req.get("ifNoneExist") or None, None)
    if query:
        if rid:
            raise Refused(
                400, [Issue("invalid", "a PUT entry's URL is <Type>/<id> or <Type>?<condition>", [f"{at}.url"])]
            )
        return Request("PUT", None, query, req.get("ifMatch") or None)
    if not rid or "/" in rid:
        raise _bad(PUT_URL, f"{at}.url")
    if resource.get("id") != rid:
        raise _bad("the resource's id must be the id in the request's URL", f"Bundle.entry[{n}].resource.id")
    return Request("PUT", rid, None, req.get("ifMatch") or None)


def located(exc: Refused, n: int, rtype: str) -> Refused:
    """``exc`` with each issue located in entry ``n`` (``Patient.identifier`` ->
    ``Bundle.entry[n].resource.identifier``; a condition's text -> the entry's request)."""
    for issue in exc.issues:
        issue.expression = [
            e
            if e.startswith("Bundle.")
            else f"Bundle.entry[{n}].resource{e[len(rtype) :]}"
            if e.startswith(rtype)
            else f"Bundle.entry[{n}].request"
            for e in issue.expression
        ] or [f"Bundle.entry[{n}]"]
    return exc


async def plan(source: Any, entries: list[dict[str, Any]], who: str) -> list[Planned]:
    """What each entry of a transaction does, decided before anything is stored; a conditional
    PUT's resource takes the id of the resource its condition finds (in place). Refused for
    the first entry that cannot be done as asked."""
    out = []
    for n, entry in enumerate(entries):
        resource = entry["resource"]
        rtype = resource["resourceType"]
        req = request_of(entry, n)
        try:
            out.append(await _plan_one(source, rtype, resource, req, who))
        except Refused as exc:
            raise located(exc, n, rtype) from None
    return out


async def _plan_one(source: Any, rtype: str, resource: dict[str, Any], req: Request, who: str) -> Planned:
    if req.method == "POST":
        if req.condition:
            found = await source.lookup(rtype, *criteria(req.condition, rtype), who=who)
            if found is not None:
                return Planned(False, "200 OK", f"{rtype}/{found.fhir_id}")
        rid = resource.get("id")
        return Planned(True, "201 Created", f"{rtype}/{rid}" if rid else rtype)
    if req.condition:
        found = await source.lookup(rtype, *criteria(req.condition, rtype), who=who)
        if found is None:
            rid = resource.get("id")
            return Planned(True, "201 Created", f"{rtype}/{rid}" if rid else rtype)
        if resource.get("id") not in (None, found.fhir_id):
            raise Refused(
                400, [Issue("invalid", f"the resource's id is not that of the {rtype} found", [f"{rtype}.id"])]
            )
        given = resource.get("id") is None
        resource["id"] = found.fhir_id
        return Planned(True, "200 OK", f"{rtype}/{found.fhir_id}", given_id=given)
    assert req.rid is not None
    status, stored_as = await source.check_update(rtype, req.rid, resource, req.if_match, who)
    return Planned(True, "201 Created" if status == 201 else "200 OK", f"{rtype}/{stored_as or req.rid}")


def repoint(entries: list[dict[str, Any]], planned: list[Planned]) -> list[dict[str, Any]]:
    """The entries to apply; references to a left-out entry's ``fullUrl`` now name the resource
    its condition found (in place)."""
    pairs = list(zip(entries, planned, strict=True))
    moved = {e["fullUrl"]: p.location for e, p in pairs if not p.apply and e.get("fullUrl")}
    kept = [e for e, p in pairs if p.apply]
    if moved:
        for e in kept:
            _repoint(e["resource"], moved)
    return kept


def _repoint(data: Any, moved: dict[str, str]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "reference" and isinstance(value, str) and value in moved:
                data[key] = moved[value]
            else:
                _repoint(value, moved)
    elif isinstance(data, list):
        for item in data:
            _repoint(item, moved)
