"""SINK_DATABASE_URL split into a URL without its password and the password.

libpq quotes a URL it cannot use, or the part it choked on, in its error messages, and
psycopg's pool logs them. So the password never goes into the text libpq parses: it is
taken out of the URL here (from the user info or a `password` query parameter),
percent-decoded, and handed to psycopg as a connection parameter of its own.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

import psycopg.conninfo

SCHEMES = ("postgresql://", "postgres://")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None); ValueError, never quoting the
    URL, when the URL is not one libpq would read.

    The user info ends at the first '@' or '/' after the scheme, as libpq reads it.
    """
    scheme = next((s for s in SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise ValueError("must be a postgresql:// URL")
    rest = url[len(scheme) :]
    end = len(rest)
    for mark in "/?":
        if mark in rest:
            end = min(end, rest.index(mark))
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority and "@" in tail.split("?", 1)[0]:
        # A '/' inside the user info: libpq would read part of the password as the host.
        raise ValueError("has an '@' after the host: percent-encode '/', '?' and '@' in the user name and password")
    password = None
    userinfo, at, host = authority.partition("@")
    if at and ":" in userinfo:
        user, _, encoded = userinfo.partition(":")
        password = _decoded(encoded)
        authority = f"{user}@{host}"
    path, question, query = tail.partition("?")
    kept = []
    for pair in query.split("&") if question else []:
        if unquote(pair.partition("=")[0]) == "password":
            password = _decoded(pair.partition("=")[2])
        else:
            kept.append(pair)
    bare = f"{scheme}{authority}{path}" + (f"?{'&'.join(kept)}" if kept else "")
    try:
        psycopg.conninfo.conninfo_to_dict(bare)
    except psycopg.Error as exc:  # the message quotes the URL, which holds no password now
        raise ValueError(f"is not a URL libpq reads: {str(exc).strip()}") from None
    return bare, password


def _decoded(encoded: str) -> str:
    if _BAD_ESCAPE.search(encoded):
        raise ValueError("has a password with a '%' that starts no %XX escape")
    try:
        return unquote_to_bytes(encoded).decode()
    except UnicodeDecodeError:
        raise ValueError("has a password that is not UTF-8 once percent-decoded") from None
