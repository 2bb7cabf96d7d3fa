"""What the SOC API's endpoint groups share: the prefix, the mapping of the SOC services' errors
to the API's JSON errors, and the checks of query parameters, bodies and ``If-Match``.

Every service error keeps its own ``code`` and both languages; its status says what kind of
refusal it is: not found 404, a change that does not apply to the thing as it is 409, a stale
``If-Match`` 412, a value that does not validate 422, a query the event store's language does not
describe 400 (``bad_query``), an event store that is away 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from starlette.responses import Response

from core.eventstore import QueryError, StoreUnavailable
from onegate.admin.api import ApiError, ApiRequest
from soc.alerts import AlertConflict, AlertError, AlertInvalid, AlertNotFound
from soc.drills.services import DrillError
from soc.incidents.services import IncidentError
from soc.response.services import ResponseError

__all__ = [
    "PREFIX",
    "Body",
    "etag",
    "expected_version",
    "guarded",
    "invalid",
    "query_bool",
    "query_list",
    "query_text",
    "query_time",
    "refuse_unknown_parameters",
    "service_error",
]

PREFIX = "/api/soc/v1"
# A user name given to the API (an assignee): the alert store's own rule, no spaces or controls.
USERNAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")

# The input each alert refusal is about, so that the error names it.
_ALERT_FIELDS = {
    "close_reason_required": "reason",
    "unknown_close_reason": "reason",
    "comment_empty": "text",
    "comment_too_long": "text",
    "note_too_long": "note",
    "invalid_username": "assignee",
    "invalid_cursor": "cursor",
    "too_many_alerts": "ids",
    "unknown_action": "action",
}
_RESPONSE_FIELDS = {
    "unknown_action": "action",
    "unavailable": "action",
    "invalid_target": "target",
    "invalid_params": "params",
}


def service_error(error: Exception) -> ApiError | None:
    """The API's answer to an error a SOC service raised; None for an error that is not theirs."""
    if isinstance(error, AlertError):
        if isinstance(error, AlertNotFound):
            status = 404
        elif isinstance(error, AlertConflict):
            status = 412
        elif isinstance(error, AlertInvalid):
            status = 422
        else:  # TransitionRefused, concurrent_change
            status = 409
        return ApiError(
            status, error.code, error.message_en, error.message_zh, field=_ALERT_FIELDS.get(error.code)
        )
    if isinstance(error, IncidentError | DrillError):
        # Both stores say 400 for a value that does not validate: 422 here, as for the others.
        status = 422 if error.status == 400 else error.status
        return ApiError(status, error.code, str(error), error.zh)
    if isinstance(error, ResponseError):
        status = 409 if error.code == "unavailable" else 422
        return ApiError(status, error.code, str(error), error.zh, field=_RESPONSE_FIELDS.get(error.code))
    if isinstance(error, QueryError):
        return ApiError(400, "bad_query", f"q: {error}"[:500], f"查询语句无效：{error}"[:500], field="q")
    if isinstance(error, StoreUnavailable):
        return ApiError(
            503,
            "unavailable",
            "the event store is temporarily unavailable; try again later",
            "事件存储暂不可用，请稍后重试",
        )
    return None


Handler = Callable[[ApiRequest], Awaitable[Response]]
_SERVICE_ERRORS = (
    AlertError,
    IncidentError,
    DrillError,
    ResponseError,
    QueryError,
    StoreUnavailable,
)


def guarded(handler: Handler) -> Handler:
    """``handler`` with the SOC services' errors turned into the API's."""

    async def call(request: ApiRequest) -> Response:
        try:
            return await handler(request)
        except _SERVICE_ERRORS as e:
            answer = service_error(e)
            if answer is None:  # pragma: no cover - every class above has its mapping
                raise
            raise answer from None

    call.__name__ = getattr(handler, "__name__", "handler")
    return call


def invalid(field: str, en: str, zh: str) -> ApiError:
    """A value of the request that does not validate (422 ``invalid_value``, naming it)."""
    return ApiError(422, "invalid_value", f"{field}: {en}", f"{field}：{zh}", field=field)


def _bad_parameter(name: str, en: str, zh: str) -> ApiError:
    return ApiError(400, "bad_request", f"{name}: {en}", f"{name}：{zh}", field=name)


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(call: ApiRequest) -> int | None:
    """The version ``If-Match`` names (None: no condition). A value that names no version cannot
    match anything: 412, as RFC 9110 §13.1.1 says for a condition that fails."""
    value = call.request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    tag = value.strip()
    if len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit() and len(tag) < 20:
        return int(tag[1:-1])
    raise ApiError(
        412,
        "version_mismatch",
        'If-Match: give the ETag that was read, e.g. "3"',
        'If-Match：请提供读取时得到的 ETag，例如 "3"',
        field="If-Match",
    )


def refuse_unknown_parameters(call: ApiRequest, known: Collection[str]) -> None:
    """A list's filters are checked by name: a misspelt filter would otherwise list (and a bulk
    change act on) far more than meant."""
    for name in call.request.query_params:
        if name not in known:
            raise _bad_parameter(name, "not a parameter of this endpoint", "不是此接口的参数")


def query_text(call: ApiRequest, name: str, *, max_length: int = 200) -> str | None:
    values = call.request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_parameter(name, "given more than once", "重复给出")
    value = values[0]
    if not value or len(value) > max_length or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad_parameter(
            name, f"1 to {max_length} printable characters", f"须为 1 至 {max_length} 个可打印字符"
        )
    return value


def query_list(call: ApiRequest, name: str, allowed: Collection[str]) -> list[str] | None:
    """Values given repeated (``?status=open&status=acknowledged``) or comma-separated."""
    values = [v.strip() for raw in call.request.query_params.getlist(name) for v in raw.split(",")]
    if not values:
        return None
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise _bad_parameter(
            name,
            f"{wrong[0][:40]!r} is not one of {', '.join(allowed)}",
            f"{wrong[0][:40]!r} 不在可选值 {', '.join(allowed)} 之中",
        )
    return list(dict.fromkeys(values))


def _zoned_time(value: str) -> datetime | None:
    """``value`` read as an ISO 8601 time with its zone (``Z`` or an offset); None otherwise."""
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def query_time(call: ApiRequest, name: str) -> datetime | None:
    """An ISO 8601 time with its zone (``2026-11-02T09:00:00Z``, ``...+08:00``)."""
    value = query_text(call, name, max_length=64)
    if value is None:
        return None
    moment = _zoned_time(value)
    if moment is None:
        raise _bad_parameter(
            name,
            "an ISO 8601 time with its zone, e.g. 2026-11-02T09:00:00Z",
            "须为带时区的 ISO 8601 时间，例如 2026-11-02T09:00:00Z",
        )
    return moment


def query_bool(call: ApiRequest, name: str) -> bool | None:
    value = query_text(call, name, max_length=5)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _bad_parameter(name, "true or false", "须为 true 或 false")
    return value == "true"


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(call: ApiRequest, name: str = "cursor") -> Any:
    value = query_text(call, name, max_length=2000)
    if value is None:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_parameter(name, "not a cursor this API gave", "不是本接口给出的分页游标") from None


class Body:
    """A JSON object body, read field by field; what is left at :meth:`done` is refused (422,
    naming it), so that a misspelt field is not silently ignored."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    @classmethod
    async def of(cls, call: ApiRequest) -> Body:
        """The call's body; a POST with no body at all (no type, no length) reads as ``{}``, so
        ``acknowledge`` or ``executed`` need none."""
        headers = call.request.headers
        empty = headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
        if empty and "content-type" not in headers:
            return cls({})
        return cls(await call.json())

    def has(self, name: str) -> bool:
        return name in self._data

    def text(self, name: str, *, required: bool = False, max_length: int = 4000) -> str | None:
        value = self._data.pop(name, None)
        if value is None:
            if required:
                raise invalid(name, "required", "必填")
            return None
        if not isinstance(value, str) or len(value) > max_length:
            raise invalid(
                name, f"text of at most {max_length} characters", f"须为最多 {max_length} 个字符的文本"
            )
        if required and not value.strip():
            raise invalid(name, "required", "必填")
        return value

    def username(self, name: str) -> str | None:
        """A user name or null (present in the body either way)."""
        if name not in self._data:
            raise invalid(name, "required (null to remove)", "必填（null 表示取消）")
        value = self._data.pop(name)
        if value is None:
            return None
        if not isinstance(value, str) or not USERNAME.fullmatch(value):
            raise invalid(name, "a user name or null", "须为用户名或 null")
        return value

    def integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self._data.pop(name, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(name, f"a whole number from {low} to {high}", f"须为 {low} 至 {high} 的整数")
        return value

    def strings(self, name: str, *, max_items: int, max_length: int = 200) -> list[str] | None:
        value = self._data.pop(name, None)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) > max_items
            or not all(isinstance(v, str) and 0 < len(v) <= max_length for v in value)
        ):
            raise invalid(
                name,
                f"a list of at most {max_items} strings (1 to {max_length} characters each)",
                f"须为最多 {max_items} 个字符串的列表（每个 1 至 {max_length} 个字符）",
            )
        return value

    def time(self, name: str, *, required: bool = False) -> datetime | None:
        value = self.text(name, required=required, max_length=64)
        if value is None:
            return None
        moment = _zoned_time(value)
        if moment is None:
            raise invalid(
                name,
                "an ISO 8601 time with its zone, e.g. 2026-11-02T09:00:00Z",
                "须为带时区的 ISO 8601 时间，例如 2026-11-02T09:00:00Z",
            )
        return moment

    def mapping(self, name: str) -> dict[str, Any] | None:
        value = self._data.pop(name, None)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(name, "a JSON object", "须为 JSON 对象")
        return value

    def done(self) -> None:
        for name in self._data:
            raise invalid(name[:64], "not a field of this request", "不是此请求的字段")


# -- pieces of the OpenAPI description -------------------------------------------------------------


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def answer(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    """A JSON response of ``schema`` (a schema's name or a schema)."""
    given = ref("schemas", schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": given}}}


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: Mapping[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: Collection[str] = (),
    description: str | None = None,
) -> dict[str, Any]:
    """One operation; ``errors``: the names of components.responses it may answer with, besides
    400, 401 and 503 (and 413, 415, 422 when it takes a ``body``)."""
    codes = {"NotFound": "404", "Conflict": "409", "Stale": "412", "Invalid": "422"}
    all_responses: dict[str, Any] = dict(responses)
    for name in errors:
        all_responses[codes[name]] = ref("responses", name)
    all_responses.update(
        {
            "400": ref("responses", "BadRequest"),
            "401": ref("responses", "Unauthenticated"),
            "503": ref("responses", "Unavailable"),
        }
    )
    result: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        result["description"] = description
    if parameters:
        result["parameters"] = parameters
    if body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref("schemas", body)}},
        }
        all_responses.update(
            {
                "413": ref("responses", "PayloadTooLarge"),
                "415": ref("responses", "UnsupportedMediaType"),
                "422": ref("responses", "Invalid"),
            }
        )
    result["responses"] = dict(sorted(all_responses.items()))
    return result


def parameter(
    name: str, schema: dict[str, Any], description: str, *, where: str = "query", required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


IF_MATCH = parameter(
    "If-Match",
    {"type": "string"},
    'Change only if the object is still at this version (its ETag, e.g. `"3"`); 412 otherwise.',
    where="header",
)
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TEXT = {"type": "object", "properties": {"en": {"type": "string"}, "zh": {"type": "string"}}}
