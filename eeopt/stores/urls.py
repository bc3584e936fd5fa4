"""Store addresses: the default URLs beside a study file, the kind of store a URL names, and masking.

The only module of eeopt that reads a URL's scheme. Everything else asks a question (`is_sqlite`,
`serves_own_ui`, `is_uri`) or hands the URL to `eeopt.stores`.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The URI schemes MLflow takes for a tracking store (a driver may follow a `+`: ``postgresql+psycopg://``).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'eeopt.db').resolve()}"


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


def default_artifact_root(study_dir: Path) -> str:
    return (study_dir / "mlartifacts").resolve().as_uri()


def resolve_sqlite(url: str, base: Path) -> str:
    """Make a relative SQLite path (``sqlite:///eeopt.db``) relative to `base` (the study file's folder)."""
    match = re.fullmatch(r"sqlite:///(?!/)(.+)", url)
    if match and match.group(1) != ":memory:":
        return f"sqlite:///{(base / match.group(1)).resolve()}"
    return url


def normalize_url(url: str) -> str:
    """Pin the PostgreSQL driver eeopt installs (psycopg 3): ``postgresql://`` -> ``postgresql+psycopg://``.

    SQLAlchemy 2.0 maps a bare ``postgresql://`` to psycopg2 and 2.1 to psycopg; naming it works with both.
    """
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def url_scheme(url: str) -> str:
    """The scheme without its driver: ``postgresql+psycopg://h/db`` -> ``postgresql``; ``''`` for a bare path;
    ``databricks`` for the bare word MLflow takes."""
    if url == "databricks":
        return "databricks"
    match = re.match(r"([A-Za-z][A-Za-z0-9.\-]*)(\+[A-Za-z0-9_]+)?:", url)
    return match.group(1).lower() if match else ""


def is_uri(location: str) -> bool:
    """Whether `location` is a URI (``s3://...``, ``file:///...``) rather than a plain folder path."""
    return bool(url_scheme(location))


def is_sqlite(url: str) -> bool:
    return url_scheme(url) == "sqlite"


def is_postgresql(url: str) -> bool:
    return url_scheme(url) in ("postgresql", "postgres")


def is_tracking_server(uri: str) -> bool:
    """An MLflow tracking server (``http(s)://``): it serves its own UI and keeps (proxies) its artifacts."""
    return url_scheme(uri) in ("http", "https")


def keeps_own_artifacts(uri: str) -> bool:
    """A tracking store that decides where artifacts go (a server, Databricks); eeopt sets the root for others."""
    return url_scheme(uri) in ("http", "https", "databricks")


def reachable_from_other_nodes(uri: str) -> bool:
    """An MLflow store other machines can log to (not a file of this one)."""
    return url_scheme(uri) in ("http", "https", "databricks")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and for ``:memory:``)."""
    if not is_sqlite(url):
        return None
    path = url.split(":///", 1)[-1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def mask_url(url: str | None) -> str | None:
    """Hide the password in a URL (``postgresql://user:***@host/db``) so it can be logged or printed."""
    if url is None:
        return None
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Hide every password in `text`: in URLs (``//user:***@host``) and libpq settings (``password=***``).

    Used on everything eeopt writes or prints that may quote a URL: error texts, tags, log lines."""
    text = re.sub(r"(//[^/\s:@]+:)[^@\s/]*@", r"\1***@", text)
    return re.sub(r"(?i)\b(password\s*=\s*)('[^']*'|[^\s&]+)", r"\1***", text)


def without_credentials(uri: str) -> str:
    """`uri` without its user and password (``http://u:p@host:5000/x`` -> ``http://host:5000/x``): for links eeopt
    stores, where a browser asks for the credentials itself."""
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def join_location(root: str, *parts: str) -> str:
    """`root/part/...` for a folder or a URI (``s3://bucket/runs`` + ``tiny`` -> ``s3://bucket/runs/tiny``)."""
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))
