"""A tracking server a team can share: MLflow with authentication, on PostgreSQL, artifacts proxied.

    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m pipeline.team_server \\
        --store postgresql+psycopg2://mlflow@dbhost/mlflow \\
        --auth-store postgresql+psycopg2://mlflow@dbhost/mlflow_auth \\
        --artifacts /shared/mlartifacts [--port 5000] [--public-url https://mlflow.lab.example]

Runs ``mlflow server`` with MLflow's basic-auth app (every request needs a user and password; new users
may read, nothing more, until the admin grants them more), the runs and the users in PostgreSQL, and the
artifacts behind the server (``--artifacts-destination``: clients never need the artifact store's
credentials). It listens on 127.0.0.1 only: remote users come through a reverse proxy or VPN that
terminates TLS (basic auth sends the password with every request) and whose address is ``--public-url``.
``--allowed-hosts`` and CORS origins are set explicitly to this address and the loopback one. The admin
password comes from ``MLFLOW_AUTH_ADMIN_PASSWORD`` or ``--admin-password-file`` (never the command line,
where every user of the machine can read it); it is used once, to create the admin in an empty user store.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError

ADMIN = "admin"
MIN_PASSWORD = 12
KNOWN_DEFAULTS = {"password1234", "password", "admin", "mlflow"}   # password1234: MLflow's old built-in one


def admin_password(file: Path | None) -> str:
    """The admin password from ``file`` or ``MLFLOW_AUTH_ADMIN_PASSWORD``, refused when missing, short or a
    well-known default."""
    if file is not None:
        try:
            password = file.read_text().strip()
        except OSError as exc:
            raise UserError(f"--admin-password-file {file}: {exc.strerror} — give a readable file") from None
    else:
        password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if not password:
        raise UserError("no admin password: set MLFLOW_AUTH_ADMIN_PASSWORD or give --admin-password-file")
    if password.lower() in KNOWN_DEFAULTS or len(password) < MIN_PASSWORD:
        raise UserError(f"the admin password is a well-known default or shorter than {MIN_PASSWORD} characters "
                        "— choose another one")
    return password


def origins(port: int, public_url: str | None) -> tuple[list[str], list[str]]:
    """(allowed Host headers, allowed CORS origins): the loopback address and ``public_url``'s."""
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}"]
    cors = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    if public_url:
        parts = urlsplit(public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--public-url {public_url}: not an http(s) URL — give the address users open, e.g. "
                            "https://mlflow.lab.example")
        hosts.append(parts.netloc)
        cors.append(f"{parts.scheme}://{parts.netloc}")
    return hosts, cors


def auth_config(auth_store: str, folder: Path) -> Path:
    """MLflow's auth settings, readable by this user only: READ for new users, the user store."""
    path = folder / "basic_auth.ini"
    path.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {auth_store}\n"
                    f"admin_username = {ADMIN}\nauthorization_function = "
                    "mlflow.server.auth:authenticate_request_basic_auth\n")
    path.chmod(0o600)
    return path


def command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment for ``args``."""
    hosts, cors = origins(args.port, args.public_url)
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(args.auth_store, folder)),
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password(args.admin_password_file)}
    # The UI's CSRF tokens are signed with it; one per start unless given (the workers share this environment).
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", args.store,
            "--artifacts-destination", args.artifacts, "--serve-artifacts", "--host", "127.0.0.1",
            "--port", str(args.port), "--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(cors),
            "--workers", str(args.workers)], env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.team_server", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--store", required=True, help="runs and models: a PostgreSQL SQLAlchemy URI")
    parser.add_argument("--auth-store", required=True, help="users and permissions: a PostgreSQL SQLAlchemy URI")
    parser.add_argument("--artifacts", required=True, help="where the server keeps artifacts (a path, s3://...)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--public-url", help="the address remote users open (the reverse proxy's)")
    parser.add_argument("--admin-password-file", type=Path, help="instead of MLFLOW_AUTH_ADMIN_PASSWORD")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        argv_, env = command(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    os.execve(argv_[0], argv_, env)   # the server is this process: signals reach it, its exit status is ours


if __name__ == "__main__":
    raise SystemExit(main())
