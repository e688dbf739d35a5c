"""The production topology of ``infra/docker/docker-compose.yml``, started for real on loopback: PostgreSQL
(Debian's package), a Prefect server on it, an MLflow tracking server on it with proxied artifacts in an
S3-speaking object store (moto's server mode), a Prefect worker on a process work pool. Every server that
listens requires credentials, as in the compose file: PostgreSQL passwords (scram-sha-256), Prefect's basic
auth (``PREFECT_SERVER_API_AUTH_STRING``), MLflow's ``basic-auth`` app, S3 signatures (moto enforces IAM
once its unauthenticated allowance is spent).

Test support only: each server is a child process of the test session, on a free port, with its data under
one temporary folder, stopped (and its data dropped) when the session ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
BUCKET = "mlflow-artifacts"
#: moto answers this many requests without a signature, then enforces IAM: the three calls that create
#: the pipeline's user, its access key and its policy (:func:`s3_credentials`).
_MOTO_UNSIGNED_CALLS = 3


class StackError(RuntimeError):
    """A server of the production-like stack did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def answers(url: str, *, auth: tuple[str, str] | None = None, timeout: float = 30.0) -> int | None:
    """The HTTP status ``url`` answers with (``None`` if nothing answers)."""
    request = urllib.request.Request(url)
    if auth is not None:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Process:
    """A server process of the stack, with its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)


def spawn(name: str, command: list[str], env: Mapping[str, str], logs: Path, cwd: Path) -> Process:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as handle:
        popen = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env), cwd=cwd, start_new_session=True)
    return Process(name, popen, log)


def wait_until(process: Process, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process.popen.poll() is not None:
            raise StackError(f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}")
        time.sleep(0.5)
    raise StackError(f"{process.name} did not become ready within {timeout:.0f} s:\n{process.tail()}")


# --- PostgreSQL --------------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``); a clear error when absent."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise StackError("PostgreSQL's server is not installed: `apt-get install -y postgresql` "
                     "(scripts/test.sh installs it when run as root)")


@dataclass
class Postgres:
    """One PostgreSQL cluster on loopback, password-only (scram-sha-256), owned by the ``postgres`` user
    when the tests run as root (PostgreSQL refuses to run as root). Its folder is a fresh one under the
    system's temporary folder: pytest's are private to the user running the tests."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="survival-model-pg-")))
    port: int = field(default_factory=free_port)
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def _as_owner(self, command: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, command: list[str], what: str) -> None:
        result = subprocess.run(self._as_owner(command), capture_output=True, encoding="utf-8", errors="replace")
        if result.returncode != 0:
            log = self.root / "postgres.log"
            raise StackError(f"PostgreSQL: {what} failed: {result.stdout}{result.stderr}"
                             f"{log.read_text(errors='replace') if log.exists() else ''}")

    def start(self) -> None:
        bindir = postgres_bindir()
        data, sockets = self.root / "data", self.root / "sockets"
        password_file = self.root / "superuser.pw"
        password_file.write_text(self.superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                   f"--pwfile={password_file}", "--encoding=UTF8", "--no-sync"], "initdb")
        password_file.unlink()
        self._run(["mkdir", "-p", str(sockets)], "mkdir")
        options = f"-p {self.port} -k {sockets} -c listen_addresses={LOOPBACK} -c fsync=off"
        self._run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "postgres.log"), "-o", options,
                   "-w", "-t", "60", "start"], "start")

    def stop(self) -> None:
        subprocess.run(self._as_owner([
            str(postgres_bindir() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]),
            capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str, owner_password: str) -> str:
        """A role and a database named ``name`` (the role owns it); returns its ``host:port/name`` part."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=LOOPBACK, port=self.port, user="postgres", password=self.superuser_password,
                             dbname="postgres", autocommit=True) as connection:
            role = sql.Identifier(name)
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(owner_password)))
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
        return f"{LOOPBACK}:{self.port}/{name}"


# --- S3 (moto's server mode) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class S3:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """What a process that reads or writes the store needs (the MLflow server only: clients go through
        its proxy and hold no S3 credentials)."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region}

    def client(self):  # type: ignore[no-untyped-def]  # boto3's client type is generated at run time
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def start_s3(base_env: Mapping[str, str], logs: Path, cwd: Path) -> tuple[Process, S3]:
    """moto's S3 server; a user with an access key and a policy (made with the unsigned allowance), then a
    bucket made with that key. From then on moto refuses unsigned or wrongly signed requests."""
    import boto3

    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    env = {**base_env, "INITIAL_NO_AUTH_ACTION_COUNT": str(_MOTO_UNSIGNED_CALLS)}
    process = spawn("s3", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], env, logs, cwd)
    wait_until(process, lambda: answers(f"{endpoint}/moto-api/", timeout=2) is not None, 60)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="mlflow")
    key = iam.create_access_key(UserName="mlflow")["AccessKey"]
    iam.put_user_policy(UserName="mlflow", PolicyName="artifacts", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
    s3 = S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    s3.client().create_bucket(Bucket=BUCKET)
    return process, s3


# --- the whole stack -------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The running stack: endpoints, credentials (generated per session, never written to the repository)
    and processes."""

    root: Path
    postgres: Postgres
    s3: S3
    prefect_url: str
    prefect_auth: tuple[str, str]
    mlflow_url: str
    mlflow_auth: tuple[str, str]
    pool: str
    processes: dict[str, Process]
    prefect_db: str = ""
    mlflow_db: str = ""

    def client_env(self) -> dict[str, str]:
        """What a pipeline client needs: the two servers and their credentials (no S3 or database ones)."""
        return {
            "PREFECT_API_URL": f"{self.prefect_url}/api",
            "PREFECT_API_AUTH_STRING": ":".join(self.prefect_auth),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": self.mlflow_auth[0],
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_auth[1],
            # Artifacts through the server's proxy only: with an S3 destination MLflow 3.17 advertises
            # multipart downloads, and clients would then fetch presigned URLs from the object store itself,
            # which clients of this topology neither reach nor should (infra/docker: the store is internal).
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        }

    def logs(self) -> str:
        return "\n\n".join(f"== {name}\n{process.tail()}" for name, process in self.processes.items())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
        self.postgres.stop()


def base_environment(root: Path) -> dict[str, str]:
    """The environment of every stack process: this one's, minus Prefect/MLflow settings of the test session
    (each server gets its own), with the project's interpreter first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONUNBUFFERED": "1", "HOME": str(root / "home")})
    (root / "home").mkdir(parents=True, exist_ok=True)
    return env


@contextlib.contextmanager
def production_stack(root: Path, pool: str = "survival-model") -> Iterator[Stack]:
    """Start PostgreSQL, S3, the MLflow and Prefect servers and a process-pool worker; stop them on exit."""
    logs = root / "logs"
    env = base_environment(root)
    postgres = Postgres()
    processes: dict[str, Process] = {}
    stack: Stack | None = None
    try:
        postgres.start()
        passwords = {name: secrets.token_urlsafe(16) for name in ("prefect", "mlflow", "mlflow_auth")}
        databases = {name: postgres.create_database(name, password) for name, password in passwords.items()}
        s3_process, s3 = start_s3(env, logs, root)
        processes["s3"] = s3_process

        mlflow_auth = ("admin", secrets.token_urlsafe(16))
        mlflow_port = free_port()
        auth_config = root / "mlflow-auth.ini"
        auth_config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = postgresql+psycopg://mlflow_auth:{passwords['mlflow_auth']}@{databases['mlflow_auth']}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        mlflow_env = {**env, **s3.env(), "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                      "MLFLOW_AUTH_ADMIN_USERNAME": mlflow_auth[0], "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_auth[1],
                      "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(24),
                      # the store's password in the environment, not on the command line (which `ps` shows)
                      "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://mlflow:{passwords['mlflow']}@{databases['mlflow']}",
                      # MLflow's job runner (GenAI evaluation jobs; seven worker processes) is not used here
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        processes["mlflow"] = spawn("mlflow", [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--serve-artifacts",
            "--host", LOOPBACK, "--port", str(mlflow_port), "--workers", "1"], mlflow_env, logs, root)
        mlflow_url = f"http://{LOOPBACK}:{mlflow_port}"

        prefect_auth = ("admin", secrets.token_urlsafe(16))
        prefect_port = free_port()
        prefect_env = {**env, "PREFECT_HOME": str(root / "prefect-server"),
                       "PREFECT_API_DATABASE_CONNECTION_URL":
                           f"postgresql+asyncpg://prefect:{passwords['prefect']}@{databases['prefect']}",
                       "PREFECT_SERVER_API_AUTH_STRING": ":".join(prefect_auth),
                       "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}
        processes["prefect"] = spawn("prefect", [
            sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(prefect_port)],
            prefect_env, logs, root)
        prefect_url = f"http://{LOOPBACK}:{prefect_port}"

        wait_until(processes["mlflow"], lambda: answers(f"{mlflow_url}/health", timeout=2) == 200, 180)
        wait_until(processes["prefect"],
                   lambda: answers(f"{prefect_url}/api/health", timeout=2) == 200, 240)
        stack = Stack(root, postgres, s3, prefect_url, prefect_auth, mlflow_url, mlflow_auth, pool, processes,
                      databases["prefect"], databases["mlflow"])
        worker_env = {**env, **stack.client_env(), "PREFECT_HOME": str(root / "worker-home")}
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                       env=worker_env, check=True, capture_output=True, cwd=root)
        worker_dir = root / "worker"
        worker_dir.mkdir()
        processes["worker"] = spawn("worker", [
            sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
            "--limit", "2"], worker_env, logs, worker_dir)
        yield stack
    except BaseException:
        if stack is None:  # say what failed to start before the processes go
            for process in processes.values():
                sys.stderr.write(f"== {process.name}\n{process.tail()}\n")
        raise
    finally:
        for process in reversed(list(processes.values())):
            process.stop()
        postgres.stop()

