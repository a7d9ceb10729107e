"""The target table: plain data, validated up front. Ground layer (imports nothing else of edgekit but errors).
Which backends compile for a target is the backend registry's knowledge (edgekit/backends.py)."""
from __future__ import annotations

import platform
from dataclasses import dataclass

from .errors import EdgekitError

@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str                      # machine architecture the artifact runs on: x86_64 | aarch64
    llvm_triple: str
    mcpu: str = ""
    mattr: tuple[str, ...] = ()
    cuda_arch: str | None = None   # e.g. "sm_87"; None for CPU-only targets
    cross_compiler: str | None = None
    notes: str = ""

    def tvm_host(self) -> dict:
        host = {"kind": "llvm", "mtriple": self.llvm_triple}
        if self.mcpu:
            host["mcpu"] = self.mcpu
        if self.mattr:
            host["mattr"] = list(self.mattr)
        return host

    def tvm_target(self) -> dict:
        """TVM target in its JSON-dict form; GPU targets carry the CPU as host."""
        if self.cuda_arch:
            return {"kind": "cuda", "arch": self.cuda_arch, "host": self.tvm_host()}
        return self.tvm_host()

    def as_row(self) -> dict:
        return {
            "name": self.name, "arch": self.arch, "llvm_triple": self.llvm_triple,
            "mcpu": self.mcpu, "mattr": ",".join(self.mattr), "cuda_arch": self.cuda_arch or "",
            "cross_compiler": self.cross_compiler or "",
        }


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def _host() -> Target:
    arch = host_arch()
    # mcpu stays empty: TVM then asks LLVM for the running CPU ("native" is not portable across CI machines)
    return Target("host", f"this machine's CPU ({arch})", arch, f"{arch}-linux-gnu")


TARGETS: dict[str, Target] = {t.name: t for t in (
    _host(),
    Target("jetson-orin", "NVIDIA Jetson Orin: aarch64 Cortex-A78AE + CUDA sm_87", "aarch64",
           "aarch64-linux-gnu", mcpu="cortex-a78ae", mattr=("+neon", "+dotprod", "+fullfp16"),
           cuda_arch="sm_87", cross_compiler="aarch64-linux-gnu-g++"),
    Target("android-arm64", "Android phone: armv8.2-a + dotprod + fp16 (ARM CPU)", "aarch64",
           "aarch64-linux-gnu", mcpu="generic", mattr=("+v8.2a", "+neon", "+dotprod", "+fullfp16"),
           cross_compiler="aarch64-linux-gnu-g++",
           notes="TVM libraries link against glibc; on Android use the NDK's clang as cross compiler"),
    Target("rpi5", "Raspberry Pi 5: Cortex-A76", "aarch64", "aarch64-linux-gnu", mcpu="cortex-a76",
           mattr=("+neon", "+dotprod", "+fullfp16"), cross_compiler="aarch64-linux-gnu-g++"),
    Target("cuda-sm90", "x86_64 host + NVIDIA H100 (sm_90)", "x86_64", "x86_64-linux-gnu",
           cuda_arch="sm_90"),
)}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise EdgekitError(f"unknown target {name!r}. Valid targets: {', '.join(TARGETS)} "
                           "(run `edgekit targets` to see what each supports).")
    return TARGETS[name]
