"""What each GatewayService method is, in one table: the role a token needs,
whether the client may repeat it (retries), and whether it reads or writes
stored data (where a router may send it). Auth, the client's retry policy
and any router read this table; a test fails for a method missing from it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from imagesearch.v1 import gateway_pb2

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


class Role(IntEnum):
    """Roles nest: read < write < admin."""

    READ = 1
    WRITE = 2
    ADMIN = 3


class Access(Enum):
    READ = "read"  # changes nothing stored: any replica may answer
    WRITE = "write"  # changes collections, images or jobs


@dataclass(frozen=True)
class Rpc:
    role: Role
    access: Access
    # Repeating it cannot change the outcome, so the client retries it on
    # UNAVAILABLE. StartIndexJob is not (each call starts a job); IndexImages
    # is a client stream, retried by Client.index_images itself.
    idempotent: bool


_READ = Rpc(Role.READ, Access.READ, idempotent=True)

GATEWAY_RPCS: dict[str, Rpc] = {
    "Search": _READ,
    "Count": _READ,
    "ListCollections": _READ,
    "GetJob": _READ,
    "ListJobs": _READ,
    "WatchJob": _READ,
    "GetImage": _READ,
    "GetThumbnail": _READ,
    "CheckAccess": _READ,  # checks the write role itself when asked
    "IndexImages": Rpc(Role.WRITE, Access.WRITE, idempotent=False),
    "StartIndexJob": Rpc(Role.WRITE, Access.WRITE, idempotent=False),
    "CancelJob": Rpc(Role.WRITE, Access.WRITE, idempotent=True),
    "ResumeJob": Rpc(Role.WRITE, Access.WRITE, idempotent=True),
    "Delete": Rpc(Role.ADMIN, Access.WRITE, idempotent=True),
    "DropCollection": Rpc(Role.ADMIN, Access.WRITE, idempotent=True),
    "Reconcile": Rpc(Role.ADMIN, Access.WRITE, idempotent=False),
}

PREFIX = f"/{SERVICE.full_name}/"


def rpc_of(method: str) -> Rpc | None:
    """The facts of a full method name (``/imagesearch.v1.GatewayService/X``);
    None for anything else."""
    if not method.startswith(PREFIX):
        return None
    return GATEWAY_RPCS.get(method[len(PREFIX) :])


def idempotent_methods() -> list[str]:
    return [name for name, rpc in GATEWAY_RPCS.items() if rpc.idempotent]
