"""The scaled deployment as processes on loopback, each a ``Part``:
nats-server (JetStream, a password), a MariaDB and a Milvus server of the
run's own (so they may be killed; the machine's are never touched), two
embedders behind one target, the index writer and a reader (a read-only
database user), two gateways on NATS, and the web face over both gateways.

Secrets reach the services through files (``*_FILE``), as a deployment's
Secrets do; the reader's database user has only SELECT.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from imagesearch.healthcheck import check
from tools.chaos.parts import Part, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
MARIADBD = "/usr/sbin/mariadbd"
MILVUS_USER = "root"  # the server's built-in admin; its default password is changed at setup
MILVUS_DEFAULT_PASSWORD = "Milvus"
MILVUS_PORT_FLAGS = (
    "proxy-internal-port",
    "root-coord-port",
    "query-coord-port",
    "query-node-port",
    "index-coord-port",
    "index-node-port",
    "data-coord-port",
    "data-node-port",
)


def tool(name: str, fallback: str) -> str | None:
    return shutil.which(name) or (fallback if Path(fallback).exists() else None)


def missing_tools() -> list[str]:
    """What this machine lacks for the run (each named with how to get it)."""
    lacks = []
    if tool("nats-server", "/usr/sbin/nats-server") is None:
        lacks.append("nats-server (apt-get install nats-server)")
    if tool("mariadbd", MARIADBD) is None or tool("mariadb-install-db", "") is None:
        lacks.append("mariadbd and mariadb-install-db (apt-get install mariadb-server)")
    if not (Path(sys.executable).parent / "milvus-server").exists():
        lacks.append("milvus-server (make install)")
    return lacks


@dataclass
class StackConfig:
    work: Path  # everything the run writes: data, logs, secrets
    photos: Path  # the folder the gateways may index (GATEWAY_ALLOWED_ROOTS)
    model: str = "resnet50"
    weights: str = ""  # empty: the embedder's default (ImageNet, else the bundled fallback)
    embed_batch: int = 16


@dataclass
class Stack:
    config: StackConfig
    parts: dict[str, Part] = field(default_factory=dict)
    nats_password: str = field(default_factory=lambda: secrets.token_hex(12))
    db_root_password: str = field(default_factory=lambda: secrets.token_hex(12))
    db_writer_password: str = field(default_factory=lambda: secrets.token_hex(12))
    db_reader_password: str = field(default_factory=lambda: secrets.token_hex(12))
    milvus_password: str = field(default_factory=lambda: secrets.token_hex(12))
    ports: dict[str, int] = field(default_factory=dict)
    first_root: bool = False  # MariaDB's root has no password until the first setup
    milvus_set: bool = False  # Milvus' root has the run's password (else its default)

    # -- addresses ---------------------------------------------------------

    @property
    def gateway_target(self) -> str:
        return "ipv4:" + ",".join(f"127.0.0.1:{self.ports[g]}" for g in self.gateways)

    @property
    def gateways(self) -> list[str]:
        return [n for n in self.parts if n.startswith("gateway")]

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    @property
    def milvus_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['milvus']}"

    @property
    def milvus_token(self) -> str:
        return f"{MILVUS_USER}:{self.milvus_password}"

    def database_url(self, user: str = "root") -> str:
        password = {
            "root": self.db_root_password,
            "writer": self.db_writer_password,
            "reader": self.db_reader_password,
        }[user]
        return f"mysql+pymysql://{user}:{password}@127.0.0.1:{self.ports['mariadb']}/chaos"

    # -- building ------------------------------------------------------------

    def build(self) -> None:
        """Makes the parts (nothing runs yet)."""
        for sub in ("logs", "secrets", "data"):
            (self.config.work / sub).mkdir(parents=True, exist_ok=True)
        for name in ("nats", "mariadb", "milvus", "embedder-1", "embedder-2", "writer", "reader"):
            self.ports[name] = free_port()
        for name in ("gateway-1", "gateway-2", "web"):
            self.ports[name] = free_port()
        self._add(self._nats())
        self._add(self._mariadb())
        self._add(self._milvus())
        for name in ("embedder-1", "embedder-2"):
            self._add(self._embedder(name))
        self._add(self._index("writer"))
        self._add(self._index("reader"))
        for name in ("gateway-1", "gateway-2"):
            self._add(self._gateway(name))
        self._add(self._web())

    def _add(self, part: Part) -> None:
        self.parts[part.name] = part

    @property
    def logs(self) -> Path:
        return self.config.work / "logs"

    def data(self, name: str) -> Path:
        path = self.config.work / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def secret(self, name: str, value: str) -> str:
        path = self.config.work / "secrets" / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return str(path)

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "LD_LIBRARY_PATH")
        return {k: v for k, v in os.environ.items() if k in keep}

    def _python(self, module: str) -> list[str]:
        return [sys.executable, "-m", module]

    def _service(
        self, name: str, module: str, service: str, env: dict[str, str], replicated: bool = False
    ) -> Part:
        """One of our gRPC services (``python -m module`` on the part's port),
        ready once its health says ``imagesearch.v1.<service>`` is SERVING."""
        port = self.ports[name]
        return Part(
            name,
            self._python(module),
            env=env,
            logs=self.logs,
            port=port,
            replicated=replicated,
            ready=lambda: check(port, f"imagesearch.v1.{service}"),
            cwd=ROOT,
        )

    def _nats(self) -> Part:
        binary = tool("nats-server", "/usr/sbin/nats-server") or "nats-server"
        port = self.ports["nats"]
        argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.data("nats"))]
        argv += ["--user", "chaos", "--pass", self.nats_password]
        return Part("nats", argv, env=self._base_env(), logs=self.logs, port=port)

    def _mariadb(self) -> Part:
        port = self.ports["mariadb"]
        data = self.data("mariadb")
        argv = [
            tool("mariadbd", MARIADBD) or MARIADBD,
            "--no-defaults",
            f"--datadir={data / 'db'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={data / 'mysqld.sock'}",
            f"--pid-file={data / 'mysqld.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=32M",
            "--max-connections=400",
            f"--log-error={self.logs / 'mariadb-error.log'}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        return Part(
            "mariadb", argv, env=self._base_env(), logs=self.logs, port=port, ready=self._db_ready
        )

    def _db_ready(self) -> bool:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=self.ports["mariadb"],
            user="root",
            password="" if self.first_root else self.db_root_password,
            connect_timeout=2,
        )
        conn.close()
        return True

    def _milvus(self) -> Part:
        data = self.data("milvus")
        etcd_client, etcd_peer = free_port(), free_port()
        etcd = data / "embed-etcd.yaml"
        etcd.write_text(
            "name: chaos\n"
            f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-cluster: chaos=http://127.0.0.1:{etcd_peer}\n"
            f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        )
        argv = [str(Path(sys.executable).parent / "milvus-server"), "--data", str(data / "server")]
        argv += ["--proxy-port", str(self.ports["milvus"]), "--etcd-port", str(etcd_client)]
        for flag in MILVUS_PORT_FLAGS:
            argv += [f"--{flag}", str(free_port())]
        argv += ["--authorization-enabled", "true", "--extra-config", "log.level=warn"]
        # The embedded etcd's peer port is not a flag: its own config file, by
        # Milvus' environment override of etcd.config.path.
        env = {**self._base_env(), "ETCD_CONFIG_PATH": str(etcd)}
        return Part(
            "milvus",
            argv,
            env=env,
            logs=self.logs,
            port=self.ports["milvus"],
            ready=self._milvus_ready,
            stop_signal=signal.SIGINT,
        )

    def _milvus_ready(self) -> bool:
        from pymilvus import MilvusClient

        token = self.milvus_token if self.milvus_set else f"{MILVUS_USER}:{MILVUS_DEFAULT_PASSWORD}"
        client = MilvusClient(uri=self.milvus_uri, token=token, timeout=5)
        try:
            # Back means serving: after a restart Milvus answers at once but
            # reloads its collections for 10-20 s more (its code 101), and
            # a search before that fails. One read of each says it can.
            for name in client.list_collections(timeout=5):
                client.query(name, filter="id >= 0", limit=1, timeout=5)
        finally:
            client.close()
        return True

    def _embedder(self, name: str) -> Part:
        from imgsearch.up import embedder_environment

        port = self.ports[name]
        env = {
            **self._base_env(),
            "EMBEDDER_HOST": "127.0.0.1",
            "EMBEDDER_PORT": str(port),
            "EMBEDDER_MODEL": self.config.model,
            # As `imgsearch up` and compose: bundled weights where ImageNet's cannot be had.
            "EMBEDDER_WEIGHTS_FALLBACK": "bundled",
            "EMBEDDER_COMPILE": "false",
            "EMBEDDER_WARMUP": "false",
        }
        if self.config.weights:
            env["EMBEDDER_WEIGHTS"] = self.config.weights
        return self._service(
            name, "embedder_service", "EmbedderService", embedder_environment(env), replicated=True
        )

    def _index(self, role: str) -> Part:
        port = self.ports[role]
        user = "reader" if role == "reader" else "writer"
        env = {
            **self._base_env(),
            "INDEX_HOST": "127.0.0.1",
            "INDEX_PORT": str(port),
            "INDEX_ROLE": role,
            "INDEX_MILVUS_URI": self.milvus_uri,
            "INDEX_MILVUS_TOKEN_FILE": self.secret("milvus-token", self.milvus_token),
            "INDEX_DATABASE_URL_FILE": self.secret(f"db-{user}", self.database_url(user)),
        }
        return self._service(role, "index_service", "IndexService", env)

    def _gateway(self, name: str) -> Part:
        port = self.ports[name]
        embedders = ",".join(f"127.0.0.1:{self.ports[e]}" for e in ("embedder-1", "embedder-2"))
        jobs_url = f"nats://chaos:{self.nats_password}@127.0.0.1:{self.ports['nats']}"
        env = {
            **self._base_env(),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_EMBEDDER_ADDR": f"ipv4:{embedders}",
            "GATEWAY_INDEX_ADDR": f"127.0.0.1:{self.ports['writer']}",
            "GATEWAY_INDEX_READ_ADDR": f"127.0.0.1:{self.ports['reader']}",
            "GATEWAY_JOBS_URL_FILE": self.secret("nats-url", jobs_url),
            "GATEWAY_DATA_DIR": str(self.data(name)),
            "GATEWAY_ALLOWED_ROOTS": str(self.config.photos),
            "GATEWAY_EMBED_BATCH": str(self.config.embed_batch),
        }
        return self._service(name, "gateway", "GatewayService", env, replicated=True)

    def _web(self) -> Part:
        port = self.ports["web"]
        env = {
            **self._base_env(),
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_GATEWAY_ADDR": self.gateway_target,
            "WEB_TIMEOUT_S": "10",
        }

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)

        return Part(
            "web",
            self._python("web_service"),
            env=env,
            logs=self.logs,
            port=port,
            ready=ready,
            cwd=ROOT,
        )

    # -- running -------------------------------------------------------------

    def start(self, timeout: float = 300) -> None:
        """Starts every part in order, each ready before the next."""
        self._install_mariadb()
        for name, part in self.parts.items():
            part.start()
            part.wait_ready(timeout)
            if name == "mariadb":
                self._setup_database()
            elif name == "milvus":
                self._setup_milvus()
                self._milvus_direct(part)

    def _install_mariadb(self) -> None:
        db = self.data("mariadb") / "db"
        if (db / "mysql").exists():
            return
        argv = [
            tool("mariadb-install-db", "") or "mariadb-install-db",
            "--no-defaults",
            f"--datadir={db}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        with (self.logs / "mariadb-install.log").open("ab") as log:
            subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT)
        self.first_root = True

    def _setup_database(self) -> None:
        """The database, a writer and a read-only reader user (GRANT SELECT)."""
        if not self.first_root:
            return
        conn = pymysql.connect(host="127.0.0.1", port=self.ports["mariadb"], user="root")
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS chaos")
            for user, password, grant in (
                ("writer", self.db_writer_password, "ALL PRIVILEGES"),
                ("reader", self.db_reader_password, "SELECT"),
            ):
                cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT {grant} ON chaos.* TO '{user}'@'127.0.0.1'")
            for host in ("localhost", "127.0.0.1", "::1"):
                cur.execute(
                    f"ALTER USER IF EXISTS 'root'@'{host}' IDENTIFIED BY %s",
                    (self.db_root_password,),
                )
        conn.commit()
        conn.close()
        self.first_root = False

    def _setup_milvus(self) -> None:
        """The built-in root's well-known password replaced by the run's own."""
        from pymilvus import MilvusClient

        if self.milvus_set:
            return
        old = f"{MILVUS_USER}:{MILVUS_DEFAULT_PASSWORD}"
        client = MilvusClient(uri=self.milvus_uri, token=old, timeout=10)
        client.update_password(MILVUS_USER, MILVUS_DEFAULT_PASSWORD, self.milvus_password)
        client.close()
        self.milvus_set = True

    def _milvus_direct(self, part: Part) -> None:
        """Restarts run the Milvus binary as the wrapper ran it (its command,
        environment and folder, read from /proc). The wrapper test-binds each
        port without SO_REUSEADDR, so after a kill, while the dead server's
        connections sit in TIME_WAIT, it would move the proxy to the next free
        port, where no client looks."""
        for pid in part.pids():
            proc = Path(f"/proc/{pid}")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"/milvus") and b"run" in argv:
                part.argv = [a.decode() for a in argv if a]
                part.env = dict(
                    item.decode().split("=", 1)
                    for item in (proc / "environ").read_bytes().split(b"\0")
                    if b"=" in item
                )
                part.cwd = (proc / "cwd").resolve()
                return
        raise RuntimeError("milvus-server runs no Milvus binary; see its log")

    def stop(self) -> None:
        for part in reversed(list(self.parts.values())):
            part.stop()

    def rss(self) -> dict[str, float]:
        return {name: round(part.rss_mib(), 1) for name, part in self.parts.items()}


__all__ = ["Stack", "StackConfig", "missing_tools"]
