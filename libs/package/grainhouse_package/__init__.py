"""Grainhouse app packages: manifest, signing, pack, verify and safe install.

Owns: the public API below; grainmgr's install and the `grainhouse app` CLI call only these.
Trusts: nothing in a package file until it has been verified.
Never: imports a service package or a transport (gRPC, NATS, HTTP) library.
"""

from grainhouse_package.caps import Caps
from grainhouse_package.errors import ErrorKind, PackageError
from grainhouse_package.keys import (
    app_id_from_public_key,
    generate_key,
    load_key,
    public_key_bytes,
    save_key,
)
from grainhouse_package.manifest import Manifest, manifest_from_dict, parse_manifest, to_json
from grainhouse_package.package import VerifiedPackage, verify_package
from grainhouse_package.packer import pack_directory
from grainhouse_package.unpack import (
    InstalledPackage,
    install_package,
    load_installed,
    remove_package,
)
from grainhouse_package.upgrade import check_upgrade

__all__ = [
    "Caps",
    "ErrorKind",
    "InstalledPackage",
    "Manifest",
    "PackageError",
    "VerifiedPackage",
    "app_id_from_public_key",
    "check_upgrade",
    "generate_key",
    "install_package",
    "load_installed",
    "load_key",
    "manifest_from_dict",
    "pack_directory",
    "parse_manifest",
    "public_key_bytes",
    "remove_package",
    "save_key",
    "to_json",
    "verify_package",
]
