"""The auth service's gRPC edge: decode, resolve the caller, call the core, encode.

Owns: the mapping between `grainhouse.auth.v1` messages and the core modules.
Trusts: nothing in a request: every credential is checked by the core (principals.py).
Never: logs a secret or returns one except in the single response that creates it.

OpenID Connect providers come from settings (`oidc_providers`); with none configured, both
OIDC RPCs answer NOT_FOUND for any provider name, as the contract says for unknown ones.
"""

from grainhouse_auth.rpc_admin import AdminRpcs
from grainhouse_auth.rpc_logins import LoginRpcs
from grainhouse_auth.rpc_origins import OriginRpcs
from grainhouse_auth.rpc_sharing import SharingRpcs
from grainhouse_auth.rpc_tokens import TokenRpcs


class AuthServicer(LoginRpcs, AdminRpcs, TokenRpcs, OriginRpcs, SharingRpcs):
    """All of auth.proto: one RPC group per module, state and caller helpers in service_base."""
