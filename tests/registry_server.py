"""A Schema Registry on loopback speaking the subset of the Confluent REST API handoff uses.

No Schema Registry server can be installed where the tests run, so this stand-in answers, over
real HTTP, the two calls confluent-kafka's ``SchemaRegistryClient`` makes for
``processors/avro/serde.py``:

* ``POST /subjects/{subject}/versions`` (``register_schema``): registers ``{"schema": …,
  "schemaType": "AVRO"}`` under the subject and answers ``{"id": N}``. As in the real registry,
  ids are global: the same schema text has one id under every subject, and registering it again
  under a subject adds no version.
* ``GET /schemas/ids/{id}`` (``get_schema``): ``{"schema": …}``, or 404 with error code 40403.
* ``GET /subjects`` (``get_subjects``): the subjects registered; what a command asks first.

With ``users`` (name → password), every request needs HTTP basic auth, as a registry behind
``authentication.method=BASIC``: anything else is refused with 401 and error code 40101.

Bodies are ``application/vnd.schemaregistry.v1+json``; errors carry the registry's
``error_code`` and ``message``, which the client turns into a ``SchemaRegistryError``.
``subjects`` shows what was registered, so a test can tell the registry was really used.
"""

from __future__ import annotations

import base64
import threading

import orjson
from fastavro.schema import parse_schema
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from processors.dev.loopback import LoopbackServer

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
SCHEMA_NOT_FOUND = 40403
INVALID_SCHEMA = 42201
UNAUTHORIZED = 40101


def _reply(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=MEDIA_TYPE)


class RegistryServer:
    """In a background thread on a free loopback port; use as a context manager."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.url = ""
        self.users = users
        self.refused = 0  # requests turned away for their credentials
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}  # schema text -> its global id
        self._schemas: dict[int, str] = {}
        self._subjects: dict[str, list[int]] = {}  # subject -> schema ids, one per version
        app = Starlette(routes=[Route("/subjects/{subject:path}/versions", self._register, methods=["POST"]),
                                Route("/schemas/ids/{schema_id:int}", self._schema, methods=["GET"]),
                                Route("/subjects", self._list_subjects, methods=["GET"])],
                        middleware=[Middleware(BaseHTTPMiddleware, dispatch=self._authenticate)])
        self._http = LoopbackServer(app, "schema-registry")

    @property
    def subjects(self) -> dict[str, list[int]]:
        with self._lock:
            return {subject: list(ids) for subject, ids in self._subjects.items()}

    def __enter__(self) -> RegistryServer:
        self.url = self._http.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.stop()

    async def _authenticate(self, request: Request, call_next) -> Response:
        if self.users is not None:
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            try:
                name, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                name, password = "", ""
            if scheme.lower() != "basic" or self.users.get(name) != password or not name:
                with self._lock:
                    self.refused += 1
                return _reply({"error_code": UNAUTHORIZED, "message": "Unauthorized"}, 401)
        return await call_next(request)

    async def _list_subjects(self, request: Request) -> Response:
        return Response(orjson.dumps(sorted(self.subjects)), media_type=MEDIA_TYPE)

    async def _register(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        text = body.get("schema", "")
        if body.get("schemaType", "AVRO") != "AVRO":
            return _reply({"error_code": INVALID_SCHEMA, "message": f"only AVRO here, not {body['schemaType']}"}, 422)
        try:
            parse_schema(orjson.loads(text))
        except Exception as exc:  # the registry refuses what is not an Avro schema
            return _reply({"error_code": INVALID_SCHEMA, "message": f"Invalid schema: {exc}"}, 422)
        subject = request.path_params["subject"]
        with self._lock:
            schema_id = self._ids.setdefault(text, len(self._ids) + 1)
            self._schemas[schema_id] = text
            versions = self._subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
        return _reply({"id": schema_id})

    async def _schema(self, request: Request) -> Response:
        schema_id = request.path_params["schema_id"]
        with self._lock:
            text = self._schemas.get(schema_id)
        if text is None:
            return _reply({"error_code": SCHEMA_NOT_FOUND, "message": f"Schema {schema_id} not found"}, 404)
        return _reply({"schema": text})
