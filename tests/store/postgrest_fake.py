"""A recording stand-in for Supabase's REST API (PostgREST) on 127.0.0.1, backed by real SQL.

It understands the documented subset the Supabase store uses, and rejects anything else:
``POST /rest/v1/rpc/<fn>`` with a JSON object of named arguments (answered ``200 null`` for
void functions), and ``GET /rest/v1/<table>?select=a,b&col=eq.v&col=gte.v&col=in.(a,b)
&order=a.desc,b.asc&limit=n``. Like PostgREST it runs each request in a transaction as the
role of the key presented (``service_role`` or ``anon``), so the migration's grants and
row-level security are what decide, and renders rows with ``json_agg``.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

SERVICE_KEY = "service-role-key-for-tests"
ANON_KEY = "anon-key-for-tests"
_ROLES = {SERVICE_KEY: "service_role", ANON_KEY: "anon"}
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_OPS = {"eq": "=", "gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


@dataclass
class Recorded:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any


class _BadRequest(Exception):
    pass


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog of 5 resets connections when a test fires 15 at once.
    request_queue_size = 128
    daemon_threads = True


class FakePostgREST:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.requests: list[Recorded] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakePostgREST:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        query = parse_qsl(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append(Recorded(method, parts.path, query, headers, body))
        key = h.headers.get("apikey", "")
        if key not in _ROLES or h.headers.get("Authorization") != f"Bearer {key}":
            return self._reply(h, 401, {"message": "Invalid API key"})
        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn, conn.transaction():
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(_ROLES[key])))
                if method == "POST" and parts.path.startswith("/rest/v1/rpc/"):
                    result = self._rpc(conn, parts.path.removeprefix("/rest/v1/rpc/"), body)
                elif method == "GET" and parts.path.startswith("/rest/v1/"):
                    result = self._select(conn, parts.path.removeprefix("/rest/v1/"), query)
                else:
                    raise _BadRequest(f"unsupported {method} {parts.path}")
        except _BadRequest as exc:
            return self._reply(h, 400, {"code": "PGRST100", "message": str(exc)})
        except (errors.UndefinedTable, errors.UndefinedFunction) as exc:
            code = "PGRST205" if isinstance(exc, errors.UndefinedTable) else "PGRST202"
            return self._reply(h, 404, {"code": code, "message": str(exc)})
        except errors.InsufficientPrivilege as exc:
            return self._reply(h, 401, {"code": "42501", "message": str(exc)})
        except psycopg.Error as exc:
            return self._reply(h, 400, {"code": exc.sqlstate, "message": str(exc)})
        self._reply(h, 200, result)

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _ident(name: str) -> sql.Identifier:
        if not _IDENT.match(name):
            raise _BadRequest(f"bad identifier {name!r}")
        return sql.Identifier(name)

    def _rpc(self, conn: psycopg.Connection[Any], fn: str, body: Any) -> Any:
        if not isinstance(body, dict):
            raise _BadRequest("an rpc body is a JSON object of named arguments")
        args = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(self._ident(k), sql.Placeholder(k)) for k in body
        )
        values = {k: Jsonb(v) if isinstance(v, list | dict) else v for k, v in body.items()}
        row = conn.execute(
            sql.SQL("select to_json({}({}))").format(self._ident(fn), args), values
        ).fetchone()
        return row[0] if row else None

    def _select(
        self, conn: psycopg.Connection[Any], table: str, query: list[tuple[str, str]]
    ) -> Any:
        columns: sql.Composable = sql.SQL("*")
        where: list[sql.Composable] = []
        order: list[sql.Composable] = []
        limit: int | None = None
        values: list[Any] = []
        for name, value in query:
            if name == "select":
                columns = sql.SQL(", ").join(self._ident(c) for c in value.split(","))
            elif name == "order":
                for term in value.split(","):
                    column, _, direction = term.partition(".")
                    if direction not in ("asc", "desc"):
                        raise _BadRequest(f"bad order term {term!r}")
                    order.append(sql.SQL("{} " + direction).format(self._ident(column)))
            elif name == "limit":
                limit = int(value)
            else:
                op, _, operand = value.partition(".")
                if op in _OPS:
                    where.append(sql.SQL("{} " + _OPS[op] + " %s").format(self._ident(name)))
                    values.append(operand)
                elif op == "in" and operand.startswith("(") and operand.endswith(")"):
                    items = next(csv.reader([operand[1:-1]], escapechar="\\"))
                    where.append(sql.SQL("{} = any(%s)").format(self._ident(name)))
                    values.append(items)
                else:
                    raise _BadRequest(f"unsupported filter {name}={value}")
        inner = sql.SQL("select {} from {}").format(columns, self._ident(table))
        if where:
            inner += sql.SQL(" where ") + sql.SQL(" and ").join(where)
        if order:
            inner += sql.SQL(" order by ") + sql.SQL(", ").join(order)
        if limit is not None:
            inner += sql.SQL(" limit {}").format(limit)
        outer = sql.SQL("select coalesce(json_agg(t), '[]'::json) from ({}) t").format(inner)
        row = conn.execute(outer, values).fetchone()
        return row[0] if row else []
