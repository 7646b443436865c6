"""The limits every package read is held to, so a hostile package cannot exhaust a host.

Owns: the default caps (1 GiB unpacked, 100,000 entries, 64 KiB manifest, ...).
Trusts: nothing.
Never: reads a header's declared size as the truth: the readers count real bytes against these.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Caps:
    """Caps for one package; pass smaller ones for tests or for untrusted uploads."""

    #: Size of the whole package file (header + compressed payload).
    max_package_bytes: int = GIB
    #: Sum of the sizes of all unpacked files (counted while decompressing).
    max_unpacked_bytes: int = GIB
    #: Files, directories and symlinks together.
    max_entries: int = 100_000
    #: The manifest JSON document.
    max_manifest_bytes: int = 64 * 1024
    #: One entry path, in UTF-8 bytes, including the leading "files/".
    max_path_bytes: int = 1024
    #: Directory depth of one entry path.
    max_depth: int = 64
    #: Decompressed/compressed ratio above which the payload is called a compression bomb ...
    max_expansion_ratio: int = 1000
    #: ... once at least this many bytes have been decompressed (small payloads compress well).
    expansion_check_after_bytes: int = 64 * MIB
    #: Memory the xz decoder may use; refuses payloads compressed with huge dictionaries.
    max_decoder_memory_bytes: int = 128 * MIB

    def max_stream_bytes(self) -> int:
        """Decompressed tar stream cap: file bytes plus generous per-entry header overhead."""
        # Each entry costs at most a header block, a pax block pair and padding (~4 KiB with
        # a long path); the stream cap only backs up the exact file-byte count.
        return self.max_unpacked_bytes + 4096 * (self.max_entries + 4) + MIB
