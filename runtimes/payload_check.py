"""Structural checks of payload bytes before a native runtime reads them.

A checksum says the bytes are the ones the manifest lists, not that they are well formed: a payload changed and
re-hashed (or an artifact built by someone else) reaches dlopen or a flatbuffer reader as is. Those parsers trust
their input, and a truncated shared library or a .pte of random bytes killed the process (SIGBUS, SIGSEGV, abort)
instead of ending in an error. These checks refuse what is malformed on its face: the container format's magic and
every offset its header declares. They cannot tell a hostile but well-formed library from a good one (a .so is
native code: only a signature, `edgekit sign` / `--trust`, says who built it).

Numpy-free and stdlib-only: this module also runs on devices and inside the emulator.
"""
from __future__ import annotations

import struct

from edgekit.errors import EdgekitError

ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "cuda": 190}
ET_DYN, ET_EXEC = 3, 2
PT_LOAD, PT_DYNAMIC = 1, 2
SHT_NOBITS = 8
MAX_SEGMENT = 1 << 32  # bytes of memory one loadable segment may ask for


def check_payload(manifest, payload: dict[str, bytes], where: str = "artifact") -> None:
    """Refuse (EdgekitError naming the file and the fix) an entry or device-code file that is malformed on its face."""
    entry = payload.get(manifest.entry)
    if entry is None:
        return
    name = f"{where}/{manifest.entry}"
    if manifest.backend == "tvm" or manifest.entry.endswith(".so"):  # by backend: the runtime that will read it
        check_elf(entry, name, machine=manifest.arch, shared=True)
    if manifest.backend == "executorch" or manifest.entry.endswith(".pte"):
        check_pte(entry, name)
    if not entry:
        raise _bad(name, "is empty")
    code = manifest.backend_info.get("device_code") if isinstance(manifest.backend_info, dict) else None
    if isinstance(code, dict) and code.get("cubin") in payload:
        check_elf(payload[code["cubin"]], f"{where}/{code['cubin']}", machine="cuda", shared=False)


def check_pte(data: bytes, name: str) -> None:
    """An ExecuTorch program: a flatbuffer with file identifier ET<nn> whose root table lies inside the file."""
    if len(data) < 16:
        raise _bad(name, f"is {len(data)} bytes, too short for an ExecuTorch program")
    if data[4:6] != b"ET" or not data[6:8].isdigit():
        raise _bad(name, f"has no ExecuTorch file identifier (found {data[4:8]!r}, expected ET followed by two "
                         "digits): not a .pte program")
    (root,) = struct.unpack_from("<I", data, 0)
    if not 8 <= root <= len(data) - 4:
        raise _bad(name, f"declares its root table at byte {root}, outside the file ({len(data)} bytes)")
    if data[8:10] == b"eh":  # extended header: b"eh" + version, then its length and the program/segment sizes
        if len(data) < 32:
            raise _bad(name, "has a truncated extended header")
        hlen, program_size, segment_base, segment_size = struct.unpack_from("<IQQQ", data, 12)
        if hlen < 28 or program_size > len(data) or (segment_size and segment_base + segment_size > len(data)):
            raise _bad(name, f"declares {program_size} program bytes and segments up to byte "
                             f"{segment_base + segment_size}, beyond the file's {len(data)} bytes (truncated?)")


def check_elf(data: bytes, name: str, machine: str, shared: bool) -> None:
    """A 64-bit little-endian ELF for `machine` whose program and section header tables, and every loadable
    segment, lie inside the file."""
    size = len(data)
    if size < 64 or data[:4] != b"\x7fELF":
        raise _bad(name, "is not an ELF file (no \\x7fELF magic)" if size >= 4 else "is empty or truncated")
    if data[4] != 2 or data[5] != 1:
        raise _bad(name, "is not a 64-bit little-endian ELF file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    want = ELF_MACHINES.get(machine)
    if want is not None and e_machine != want:
        raise _bad(name, f"is built for ELF machine {e_machine}, not {machine} ({want})")
    if shared and e_type != ET_DYN:
        raise _bad(name, f"is ELF type {e_type}, not a shared library (ET_DYN)")
    if e_phnum and (e_phentsize != 56 or e_phoff + e_phnum * 56 > size):
        raise _bad(name, f"declares program headers up to byte {e_phoff + e_phnum * e_phentsize}, beyond the file's "
                         f"{size} bytes (truncated?)")
    if e_shoff and (e_shentsize != 64 or e_shoff + e_shnum * 64 > size):
        raise _bad(name, f"declares section headers up to byte {e_shoff + e_shnum * e_shentsize}, beyond the file's "
                         f"{size} bytes (truncated?)")
    e_shstrndx = struct.unpack_from("<H", data, 62)[0]
    if e_shoff and (not e_shnum or e_shstrndx >= e_shnum):
        raise _bad(name, f"declares {e_shnum} section headers with the name table at index {e_shstrndx}")
    for i in range(e_shnum if e_shoff else 0):
        sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack_from("<IQQQQ", data, e_shoff + i * 64 + 4)
        if sh_type != SHT_NOBITS and sh_offset + sh_size > size:
            raise _bad(name, f"section {i} spans bytes {sh_offset}-{sh_offset + sh_size}, beyond the file's {size} "
                             "bytes (truncated?)")
    if shared and not e_phnum:
        raise _bad(name, "has no program headers: not a loadable library")
    loads, end, dynamic = [], 0, None
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * 56)
        if p_type in (PT_LOAD, PT_DYNAMIC) and p_offset + p_filesz > size:
            raise _bad(name, f"segment {i} spans bytes {p_offset}-{p_offset + p_filesz}, beyond the file's {size} "
                             "bytes (truncated?)")
        if p_type == PT_LOAD:
            aligned = p_align <= 1 or (p_align & (p_align - 1) == 0 and p_vaddr % p_align == p_offset % p_align)
            if p_filesz > p_memsz or not aligned or p_vaddr < end or p_memsz > MAX_SEGMENT:
                raise _bad(name, f"has an inconsistent loadable segment {i} (file size {p_filesz}, memory size "
                                 f"{p_memsz}, address {p_vaddr:#x}, alignment {p_align})")
            end = p_vaddr + p_memsz  # loadable segments come in address order and do not overlap
            loads.append((p_offset, p_vaddr, p_memsz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_vaddr, p_memsz)
    if shared and not loads:
        raise _bad(name, "has no loadable segment")
    if shared and loads[0][0] != 0:  # the first one maps the ELF and program headers (every linker does so)
        raise _bad(name, "does not map its own headers in its first loadable segment")
    if shared and (dynamic is None or not any(v <= dynamic[0] and dynamic[0] + dynamic[1] <= v + n
                                              for _, v, n in loads)):
        raise _bad(name, "has no dynamic section inside a loadable segment: not a loadable shared library")


def _bad(name: str, what: str) -> EdgekitError:
    return EdgekitError(f"{name} {what}. The payload is damaged or was replaced (its checksum was recomputed); "
                        "refusing to hand it to the runtime. Recompile the artifact or copy it again from its source.")
