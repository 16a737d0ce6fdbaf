"""The REST endpoints: routing on the raw path, authentication, parameters, GitLab's answers.

Transport-free: ``server.py`` turns HTTP into a :class:`Request` and a :class:`Response` back
into HTTP (and injects faults in between).  Error bodies copy GitLab's: ``{"message": ...}`` from
the application, ``{"error": ...}`` from parameter validation and unknown routes.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from deploystate_backends.gitlab_standin.issues import (
    BadIssueParameter,
    Issue,
    find_issues,
    render_freeze_period,
    render_issue,
)
from deploystate_backends.gitlab_standin.notes import NOTE_LIMIT, BadNoteParameter, render_note, sorted_notes
from deploystate_backends.gitlab_standin.pagination import BadPageParameter, paginate
from deploystate_backends.gitlab_standin.render import Renderer, timestamp
from deploystate_backends.gitlab_standin.specs import (
    DEFAULT_TOKENS,
    KNOWN_STATUSES,
    PIPELINE_SOURCES,
    TERMINAL_STATUSES,
    ProjectSpec,
)
from deploystate_backends.gitlab_standin.tags import ORDER_BY as TAG_ORDER_BY
from deploystate_backends.gitlab_standin.tags import find_tags, render_tag
from deploystate_backends.gitlab_standin.world import ENVIRONMENT_VARIABLE, Job, Pipeline, World

Query = Mapping[str, Sequence[str]]


@attrs.frozen
class Request:
    method: str
    raw_path: str  # without the query, NOT percent-decoded: group%2Fproject stays one segment
    query: Query
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    base_url: str  # scheme://host:port the client used, for web_url and Link headers


@attrs.frozen
class Response:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


class ApiError(Exception):
    """Ends a request with GitLab's error answer."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.response = Response(status, body)


def _message(status: int, text: str) -> ApiError:
    return ApiError(status, {"message": text})


def _invalid(name: str, what: str = "is invalid") -> ApiError:
    return ApiError(400, {"error": f"{name} {what}"})


UNAUTHORIZED = _message(401, "401 Unauthorized")
NOT_FOUND = _message(404, "404 Not found")

Handler = Callable[["Api", Request, Mapping[str, str], Renderer], Response]


@attrs.frozen
class Route:
    name: str
    method: str
    pattern: re.Pattern[str]
    handler: Handler


_PROJECT = r"/api/v4/projects/(?P<project>[^/]+)"
_PIPELINE = _PROJECT + r"/pipelines/(?P<pipeline>[^/]+)"
_JOB = _PROJECT + r"/jobs/(?P<job>[^/]+)"
_ISSUE = _PROJECT + r"/issues/(?P<issue>[^/]+)"


def _token(request: Request) -> str | None:
    """The caller's personal/project access token: header, query, or OAuth bearer."""
    token = request.headers.get("private-token")
    if token is None and request.query.get("private_token"):
        token = request.query["private_token"][-1]
    auth = request.headers.get("authorization")
    if token is None and auth and auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    return token


def _nest(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Rack-style form keys: ``variables[KEY]=v`` -> {"variables": {"KEY": "v"}}."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", key)
        if match is None:
            out[key] = value
            continue
        outer, inner = match.groups()
        if inner == "":
            container = out.setdefault(outer, [])
            if isinstance(container, list):
                container.append(value)
        else:
            container = out.setdefault(outer, {})
            if isinstance(container, dict):
                container[inner] = value
    return out


def _body_params(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    content_type = request.headers.get("content-type") or ""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or (not media and request.body.lstrip()[:1] in (b"{", b"[")):
        try:
            data = json.loads(request.body)
        except ValueError:
            raise ApiError(400, {"error": "body is not valid JSON"}) from None
        if not isinstance(data, dict):
            raise ApiError(400, {"error": "body must be a JSON object"})
        return data
    if media == "multipart/form-data":
        raw = f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        pairs = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                pairs.append((name, payload.decode("utf-8", "replace")))
        return _nest(pairs)
    text = request.body.decode("utf-8", "replace")
    return _nest(urllib.parse.parse_qsl(text, keep_blank_values=True))


def _single(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _many(query: Query, name: str) -> list[str]:
    return [v for key in (name, f"{name}[]") for v in query.get(key, ())]


def _boolean(query: Query, name: str) -> bool | None:
    value = _single(query, name)
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes", "t"):
        return True
    if value.lower() in ("false", "0", "no", "f"):
        return False
    raise _invalid(name)


def _datetime(query: Query, name: str) -> float | None:
    value = _single(query, name)
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _on_side(value: float, moment: float, after: bool) -> bool:
    return value > moment if after else value < moment


def _integer_id(value: str, name: str) -> int:
    if not value.isdigit():
        raise _invalid(name)
    return int(value)


_SCOPES: dict[str, Callable[[Pipeline], bool]] = {
    "running": lambda p: p.status == "running",
    "pending": lambda p: p.status == "pending",
    "finished": lambda p: p.status in TERMINAL_STATUSES,
    "branches": lambda p: not p.tag,
    "tags": lambda p: p.tag,
}
_ORDER_BY: dict[str, Callable[[Pipeline], Any]] = {
    "id": lambda p: p.id,
    "status": lambda p: (p.status, p.id),
    "ref": lambda p: (p.ref, p.id),
    "updated_at": lambda p: (p.updated_at, p.id),
    "user_id": lambda p: (p.user, p.id),
}


FORBIDDEN = _message(403, "403 Forbidden")


class Api:
    """The endpoints python-gitlab uses for pipelines, jobs, bridges and triggers.

    ``maintainer_tokens``: the access tokens whose users are Maintainers of every project (None:
    all of them); only those may list trigger tokens, as on GitLab.  ``mask_trigger_tokens``: the
    trigger tokens were created by someone else than the caller, so GitLab shows only their first
    four characters.
    """

    def __init__(self, world: World, tokens: frozenset[str] = DEFAULT_TOKENS, *,
                 maintainer_tokens: frozenset[str] | None = None, mask_trigger_tokens: bool = False) -> None:
        self.world = world
        self.tokens = frozenset(tokens)
        self.maintainer_tokens = None if maintainer_tokens is None else frozenset(maintainer_tokens)
        self.mask_trigger_tokens = mask_trigger_tokens
        self.routes = (
            Route("trigger", "POST", re.compile(_PROJECT + r"/trigger/pipeline"), Api._trigger),
            Route("trigger", "POST", re.compile(_PROJECT + r"/ref/(?P<ref>.+)/trigger/pipeline"),
                  Api._trigger),
            Route("project", "GET", re.compile(_PROJECT), Api._project),
            Route("pipelines", "GET", re.compile(_PROJECT + r"/pipelines"), Api._pipelines),
            Route("pipeline_latest", "GET", re.compile(_PROJECT + r"/pipelines/latest"), Api._latest),
            Route("pipeline", "GET", re.compile(_PIPELINE), Api._pipeline),
            Route("pipeline_jobs", "GET", re.compile(_PIPELINE + "/jobs"), Api._pipeline_jobs),
            Route("pipeline_bridges", "GET", re.compile(_PIPELINE + "/bridges"), Api._bridges),
            Route("pipeline_variables", "GET", re.compile(_PIPELINE + "/variables"), Api._variables),
            Route("pipeline_retry", "POST", re.compile(_PIPELINE + "/retry"), Api._pipeline_retry),
            Route("pipeline_cancel", "POST", re.compile(_PIPELINE + "/cancel"), Api._pipeline_cancel),
            Route("job", "GET", re.compile(_JOB), Api._job),
            Route("job_play", "POST", re.compile(_JOB + "/play"), Api._job_play),
            Route("job_retry", "POST", re.compile(_JOB + "/retry"), Api._job_retry),
            Route("job_cancel", "POST", re.compile(_JOB + "/cancel"), Api._job_cancel),
            Route("tags", "GET", re.compile(_PROJECT + "/repository/tags"), Api._tags),
            Route("triggers", "GET", re.compile(_PROJECT + "/triggers"), Api._triggers),
            Route("issues", "GET", re.compile(_PROJECT + "/issues"), Api._issues),
            Route("freeze_periods", "GET", re.compile(_PROJECT + "/freeze_periods"), Api._freeze_periods),
            Route("issue_notes", "GET", re.compile(_ISSUE + "/notes"), Api._notes),
            Route("issue_notes", "POST", re.compile(_ISSUE + "/notes"), Api._add_note),
        )

    # --- dispatch ------------------------------------------------------------------------

    def route(self, method: str, raw_path: str) -> tuple[str, Route | None]:
        """The route name (for counters and faults) and the route, if the method is allowed.

        Unknown paths are named ``"unknown"``; known paths with another method keep their name
        and get no route (405).
        """
        name = "unknown"
        for route in self.routes:
            if route.pattern.fullmatch(raw_path):
                if route.method == method:
                    return route.name, route
                name = route.name
        return name, None

    def handle(self, request: Request) -> Response:
        name, route = self.route(request.method, request.raw_path)
        if route is None:
            if name == "unknown":
                return Response(404, {"error": "404 Not Found"})
            return Response(405, {"error": "405 Not Allowed"})
        match = route.pattern.fullmatch(request.raw_path)
        assert match is not None
        params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items() if v is not None}
        try:
            token = _token(request)
            if token is not None and token not in self.tokens:
                raise UNAUTHORIZED
            if token is None and route.name != "trigger":
                raise UNAUTHORIZED
            with self.world.lock:
                self.world.settle()
                renderer = Renderer(self.world, request.base_url, self.world.clock.now())
                return route.handler(self, request, params, renderer)
        except ApiError as error:
            return error.response
        except (BadPageParameter, BadIssueParameter, BadNoteParameter) as error:
            return Response(400, {"error": str(error)})

    # --- lookups -------------------------------------------------------------------------

    def _find_project(self, params: Mapping[str, str]) -> ProjectSpec:
        spec = self.world.project(params["project"])
        if spec is None:
            raise _message(404, "404 Project Not Found")
        return spec

    def _find_pipeline(self, params: Mapping[str, str]) -> Pipeline:
        spec = self._find_project(params)
        pipeline = self.world.peek_pipeline(_integer_id(params["pipeline"], "pipeline_id"))
        if pipeline is None or pipeline.project_id != spec.id:
            raise NOT_FOUND
        return pipeline

    def _find_job(self, params: Mapping[str, str]) -> Job:
        spec = self._find_project(params)
        job = self.world.job(_integer_id(params["job"], "job_id"))
        if job is None or job.project_id != spec.id:
            raise NOT_FOUND
        return job

    @staticmethod
    def _page(items: Sequence[Any], request: Request) -> tuple[list[Any], tuple[tuple[str, str], ...]]:
        chunk, headers = paginate(items, request.query, request.base_url, request.raw_path)
        return chunk, tuple(headers)

    # --- endpoints -----------------------------------------------------------------------

    def _trigger(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        merged: dict[str, Any] = _nest([(k, v) for k, vs in request.query.items() for v in vs])
        merged.update(_body_params(request))
        if "ref" in params:
            merged["ref"] = params["ref"]
        variables = merged.get("variables") or {}
        environment = variables.get(ENVIRONMENT_VARIABLE, "") if isinstance(variables, dict) else ""
        self.world.counters.trigger_request(environment if isinstance(environment, str) else "")
        problems = []
        for name in ("ref", "token"):
            if merged.get(name) is None:
                problems.append(f"{name} is missing")
            elif not isinstance(merged[name], str) or not merged[name].strip():
                problems.append(f"{name} is empty")
        if problems:
            raise ApiError(400, {"error": ", ".join(problems)})
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise _message(400, "variables needs to be a map of key-valued strings")
        spec = self.world.project(params["project"])
        if spec is None or merged["token"] not in spec.trigger_tokens:
            # GitLab does not tell a wrong token from a missing project: both are 404.
            raise _message(404, "404 Not Found")
        ref = merged["ref"]
        if spec.known_refs is not None and ref not in spec.known_refs | spec.branches:
            raise ApiError(400, {"message": {"base": ["Reference not found"]}})
        payload = json.dumps({"id": params["project"], "ref": ref, "variables": variables})
        pipeline = self.world.trigger(spec, ref, variables, trigger_payload=payload)
        return Response(201, r.pipeline(pipeline))

    def _project(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        return Response(200, r.project(self._find_project(params)))

    def _pipelines(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        q = request.query
        found = self.world.pipelines(spec)
        scope, status, source = _single(q, "scope"), _single(q, "status"), _single(q, "source")
        if scope is not None:
            if scope not in _SCOPES:
                raise _invalid("scope", "does not have a valid value")
            found = [p for p in found if _SCOPES[scope](p)]
        if status is not None:
            if status not in KNOWN_STATUSES:
                raise _invalid("status", "does not have a valid value")
            found = [p for p in found if p.status == status]
        if source is not None and source not in PIPELINE_SOURCES:
            raise _invalid("source", "does not have a valid value")
        # Child pipelines only show when asked for by source, as on GitLab 17.0 and later.
        found = [p for p in found if p.source == source or (source is None and p.source != "parent_pipeline")]
        for name, attribute in (("ref", "ref"), ("sha", "sha"), ("username", "user"), ("name", "name")):
            wanted = _single(q, name)
            if wanted is not None:
                found = [p for p in found if getattr(p, attribute) == wanted]
        if _boolean(q, "yaml_errors"):
            found = []  # the stand-in's pipelines never have configuration errors
        for name, attribute, after in (
            ("updated_after", "updated_at", True), ("updated_before", "updated_at", False),
            ("created_after", "created_at", True), ("created_before", "created_at", False),
        ):
            moment = _datetime(q, name)
            if moment is not None:
                found = [p for p in found if _on_side(getattr(p, attribute), moment, after)]
        order_by, sort = _single(q, "order_by") or "id", _single(q, "sort") or "desc"
        if order_by not in _ORDER_BY:
            raise _invalid("order_by", "does not have a valid value")
        if sort not in ("asc", "desc"):
            raise _invalid("sort", "does not have a valid value")
        found.sort(key=_ORDER_BY[order_by], reverse=sort == "desc")
        chunk, headers = self._page(found, request)
        return Response(200, [r.pipeline_basic(p) for p in chunk], headers)

    def _latest(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        ref = _single(request.query, "ref") or spec.default_branch
        candidates = [p for p in self.world.pipelines(spec) if p.ref == ref]
        if not candidates:
            raise NOT_FOUND
        return Response(200, r.pipeline(max(candidates, key=lambda p: p.id)))

    def _pipeline(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        return Response(200, r.pipeline(self._find_pipeline(params)))

    @staticmethod
    def _scoped(jobs: list[Job], query: Query) -> list[Job]:
        scopes = _many(query, "scope")
        unknown = [s for s in scopes if s not in KNOWN_STATUSES]
        if unknown:
            raise _invalid("scope", "does not have a valid value")
        if scopes:
            jobs = [j for j in jobs if j.status in scopes]
        return sorted(jobs, key=lambda j: j.id, reverse=True)

    def _pipeline_jobs(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        pipeline = self._find_pipeline(params)
        retried = bool(_boolean(request.query, "include_retried"))
        jobs = [j for j in pipeline.jobs if not j.is_bridge and (retried or not j.retried)]
        chunk, headers = self._page(self._scoped(jobs, request.query), request)
        return Response(200, [r.job(j) for j in chunk], headers)

    def _bridges(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        pipeline = self._find_pipeline(params)
        jobs = [j for j in pipeline.jobs if j.is_bridge and not j.retried]
        chunk, headers = self._page(self._scoped(jobs, request.query), request)
        return Response(200, [r.bridge(j) for j in chunk], headers)

    def _variables(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        pipeline = self._find_pipeline(params)
        return Response(200, [r.variable(v) for v in pipeline.variables])

    def _pipeline_retry(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        pipeline = self._find_pipeline(params)
        self.world.retry_pipeline(pipeline)
        return Response(201, r.pipeline(pipeline))

    def _pipeline_cancel(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        pipeline = self._find_pipeline(params)
        self.world.cancel_pipeline(pipeline)
        return Response(200, r.pipeline(pipeline))

    def _job(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        return Response(200, r.job(self._find_job(params)))

    def _job_play(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        job = self._find_job(params)
        if not self.world.play_job(job):
            raise _message(400, "400 Bad request - Unplayable Job")
        return Response(200, r.job(job))

    def _job_retry(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        new = self.world.retry_job(self._find_job(params))
        if new is None:
            raise _message(403, "403 Forbidden - Job is not retryable")
        return Response(201, r.job(new))

    def _job_cancel(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        job = self._find_job(params)
        self.world.cancel_job(job)
        return Response(201, r.job(job))

    def _tags(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        q = request.query
        order_by, sort = _single(q, "order_by") or "updated", _single(q, "sort") or "desc"
        if order_by not in TAG_ORDER_BY:
            raise _invalid("order_by", "does not have a valid value")
        if sort not in ("asc", "desc"):
            raise _invalid("sort", "does not have a valid value")
        found = find_tags(self.world, spec, search=_single(q, "search"), order_by=order_by, sort=sort)
        chunk, headers = self._page(found, request)
        return Response(200, [render_tag(t, r.base_url, spec, self.world.user) for t in chunk], headers)

    def _triggers(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        token = _token(request)
        if self.maintainer_tokens is not None and token not in self.maintainer_tokens:
            raise FORBIDDEN  # listing trigger tokens needs the Maintainer role (admin_build)
        found = [r.trigger(spec, index, value, masked=self.mask_trigger_tokens)
                 for index, value in enumerate(spec.trigger_tokens)]
        chunk, headers = self._page(found, request)
        return Response(200, chunk, headers)

    def _issues(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        q = request.query
        found = find_issues(self.world.issues(spec), labels=_single(q, "labels"), state=_single(q, "state"),
                            order_by=_single(q, "order_by"), sort=_single(q, "sort"))
        chunk, headers = self._page(found, request)
        return Response(200, [render_issue(i, spec, r.base_url, r.user, timestamp,
                                           notes=len(self.world.notes(i))) for i in chunk], headers)

    def _freeze_periods(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        spec = self._find_project(params)
        chunk, headers = self._page(self.world.freeze_periods(spec), request)
        return Response(200, [render_freeze_period(p, timestamp) for p in chunk], headers)

    def _find_issue(self, params: Mapping[str, str]) -> Issue:
        spec = self._find_project(params)
        issue = self.world.issue(spec, _integer_id(params["issue"], "issue_iid"))
        if issue is None:
            raise _message(404, "404 Issue Not Found")
        return issue

    def _notes(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        issue = self._find_issue(params)
        q = request.query
        found = sorted_notes(self.world.notes(issue), order_by=_single(q, "order_by"),
                             sort=_single(q, "sort"))
        chunk, headers = self._page(found, request)
        return Response(200, [render_note(n, r.user, timestamp) for n in chunk], headers)

    def _add_note(self, request: Request, params: Mapping[str, str], r: Renderer) -> Response:
        issue = self._find_issue(params)
        merged: dict[str, Any] = {k: vs[-1] for k, vs in request.query.items() if vs}
        merged.update(_body_params(request))
        body = merged.get("body")
        if body is None:
            raise _invalid("body", "is missing")
        if not isinstance(body, str) or not body.strip():
            raise _message(400, "400 Bad request - Note can't be blank")
        if len(body) > NOTE_LIMIT:
            raise _message(400, f"400 Bad request - Note is too long (maximum is {NOTE_LIMIT} characters)")
        internal = merged.get("internal", merged.get("confidential", False))
        note = self.world.add_note(issue, body, internal=internal in (True, "true", "1"))
        return Response(201, render_note(note, r.user, timestamp))
