"""``imgsearch secrets FOLDER``: the passwords a compose deployment reads from
files (Docker secrets), never from its environment or a manifest.

Made once, with random values, and kept (an existing file is never
overwritten: the databases were initialised with it):

- mysql-root-password, mysql-password (the index writer's user
  ``imagesearch``), mysql-reader-password (``imagesearch_reader``, which
  deploy/mysql/reader-user.sh gives only SELECT);
- index-database-url, index-reader-database-url: the index's
  INDEX_DATABASE_URL_FILE, writer and readers;
- nats-password (the gateways' GATEWAY_JOBS_PASSWORD_FILE) and nats.conf
  (NATS's authorization block, the same password);
- milvus-token (the index's INDEX_MILVUS_TOKEN_FILE, root:PASSWORD) and
  milvus-user.yaml (Milvus' user.yaml: authentication on, the same root
  password, which Milvus 2.4.6+ takes on its first start).
"""

from __future__ import annotations

import secrets
from pathlib import Path

WRITER_USER = "imagesearch"
READER_USER = "imagesearch_reader"
NATS_USER = "imagesearch"
DATABASE = "imagesearch"
DB_HOST = "mysql:3306"


def _password() -> str:
    return secrets.token_hex(16)  # letters and digits: safe in a URL and in SQL


def make_secrets(folder: Path) -> tuple[list[Path], list[Path]]:
    """Writes the files FOLDER lacks; (made, kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # other users of this machine cannot list or read them

    def read_or_make(name: str) -> str:
        path = folder / name
        return path.read_text().strip() if path.exists() else _password()

    root = read_or_make("mysql-root-password")
    writer = read_or_make("mysql-password")
    reader = read_or_make("mysql-reader-password")
    nats = read_or_make("nats-password")
    milvus = read_or_make("milvus-password")
    wanted = {
        "mysql-root-password": root,
        "mysql-password": writer,
        "mysql-reader-password": reader,
        "index-database-url": f"mysql+pymysql://{WRITER_USER}:{writer}@{DB_HOST}/{DATABASE}",
        "index-reader-database-url": (
            f"mysql+pymysql://{READER_USER}:{reader}@{DB_HOST}/{DATABASE}"
        ),
        "nats-password": nats,
        "nats.conf": f'authorization {{\n  user: {NATS_USER}\n  password: "{nats}"\n}}',
        "milvus-password": milvus,
        "milvus-token": f"root:{milvus}",
        "milvus-user.yaml": (
            "common:\n  security:\n    authorizationEnabled: true\n"
            f'    defaultRootPassword: "{milvus}"'
        ),
    }
    made, kept = [], []
    for name, value in wanted.items():
        path = folder / name
        if path.exists():
            kept.append(path)
            continue
        path.write_text(value + "\n")
        # Readable by the containers' own users (a bind mount keeps the mode);
        # the folder (0700) keeps the rest of this machine out.
        path.chmod(0o644)
        made.append(path)
    return made, kept
