"""``HEALING_STORE`` URLs: parse them, and show them without their password.

sqlite:///relative/path.db     relative to the working directory (default .healing/healing.db)
sqlite:////absolute/path.db
sqlite:///:memory:             one process, gone at close: for tests
postgresql://user:password@host:5432/dbname?sslmode=require   (also postgres://; Supabase's
                               Postgres connection strings work as they are)
supabase://                    Supabase REST, project from SUPABASE_URL, key from SUPABASE_KEY
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from healing.errors import ConfigError

DEFAULT_STORE_URL = "sqlite:///.healing/healing.db"
STORE_ENV = "HEALING_STORE"
StoreKind = Literal["sqlite", "postgres", "supabase"]

_EXPECTED = (
    "expected sqlite:///path/to/healing.db, postgresql://user:password@host:5432/dbname "
    "or supabase:// (with SUPABASE_URL and SUPABASE_KEY set)"
)
_PG_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
}
_USERINFO_PASSWORD = re.compile(r"(://[^/?#@:]*:)([^/?#@]*)@")
# password=... in a URL's query or in a libpq "key=value" string
_QUERY_PASSWORD = re.compile(
    r"((?:^|[?&\s])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&#\s]*)", re.IGNORECASE
)
_Bad = Callable[[str], ConfigError]


@dataclass(frozen=True)
class StoreURL:
    kind: StoreKind
    target: str
    """The SQLite path, the libpq URL, or "" for Supabase."""
    display: str
    """The URL as given, password masked."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user info, query, or libpq key=value)."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


def scrub(text: str, url: str) -> str:
    """``text`` (say, a driver's error message) with ``url``'s password removed."""
    text = text.replace(url, mask_url(url))
    for pattern in (_USERINFO_PASSWORD, _QUERY_PASSWORD):
        for match in pattern.finditer(url):
            for secret in {match[2], unquote(match[2])}:
                if len(secret) >= 3:  # shorter ones would garble the text, not hide anything
                    text = text.replace(secret, "***")
    return text


def parse_store_url(url: str, *, env_var: str = STORE_ENV) -> StoreURL:
    """Check ``url`` and say which backend it selects.

    Raises:
        ConfigError: naming ``env_var`` and what is wrong with the URL.
    """
    shown = mask_url(url.strip())
    if not url.strip():
        raise ConfigError(f"{env_var} is empty; {_EXPECTED}")

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{env_var}={shown!r} is malformed: {problem}; {_EXPECTED}")

    url = url.strip()
    scheme, sep, rest = url.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise bad("it has no scheme")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return StoreURL("sqlite", _sqlite_path(rest, bad), shown)
    if scheme in _PG_SCHEMES:
        return StoreURL("postgres", _postgres_url(_PG_SCHEMES[scheme], rest, url, bad), shown)
    if scheme == "supabase":
        if rest not in ("", "//", "///"):
            raise bad("supabase:// takes no host or path (the project comes from SUPABASE_URL)")
        return StoreURL("supabase", "", shown)
    raise bad(f"unsupported scheme {scheme!r}")


def _sqlite_path(rest: str, bad: _Bad) -> str:
    if not rest.startswith("///"):
        if rest.startswith("//"):
            raise bad("a SQLite URL has no host: use sqlite:///relative.db or sqlite:////abs.db")
        raise bad("a SQLite URL starts with sqlite:/// (three slashes)")
    path = rest[3:]
    if not path:
        raise bad("the SQLite URL names no file")
    if "?" in path or "#" in path:
        raise bad("SQLite URLs take no query string or fragment")
    return path


def _postgres_url(scheme: str, rest: str, url: str, bad: _Bad) -> str:
    if not rest.startswith("//"):
        raise bad("a PostgreSQL URL starts with postgresql://")
    netloc = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        _, colon, number = port.rpartition(":") if ":" in port else ("", "", "")
        if colon and not (number.isdigit() and 0 < int(number) < 65536):
            raise bad(f"port {number!r} is not a number from 1 to 65535")
    normalized = f"{scheme}:{rest}"
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(normalized)
    except ProgrammingError as exc:
        raise bad(scrub(" ".join(str(exc).split()), url)) from None
    return normalized
