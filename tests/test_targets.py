import pytest

from edgekit.errors import EdgekitError
from edgekit.backends import check as check_backend
from edgekit.targets import TARGETS, get_target


def test_table_has_the_documented_targets():
    assert {"host", "jetson-orin", "android-arm64", "rpi5", "cuda-sm90"} <= set(TARGETS)
    jetson = get_target("jetson-orin")
    assert (jetson.arch, jetson.cuda_arch, jetson.mcpu) == ("aarch64", "sm_87", "cortex-a78ae")
    assert jetson.tvm_target()["host"]["mtriple"] == "aarch64-linux-gnu"
    phone = get_target("android-arm64")
    assert "+dotprod" in phone.mattr and "+fullfp16" in phone.mattr and phone.cuda_arch is None
    assert get_target("rpi5").mcpu == "cortex-a76"
    assert get_target("cuda-sm90").tvm_target() == {"kind": "cuda", "arch": "sm_90",
                                                    "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}


def test_unknown_target_lists_valid_ones():
    with pytest.raises(EdgekitError, match=r"unknown target 'jetson'.*host, jetson-orin, android-arm64"):
        get_target("jetson")


def test_unsupported_backend_for_target_names_the_supported_ones():
    with pytest.raises(EdgekitError, match=r"'executorch' is not supported for target 'cuda-sm90'.*tvm, onnxruntime"):
        check_backend(get_target("cuda-sm90"), "executorch")


def test_targets_command_prints_every_target(cli):
    code, out, _ = cli("targets", "--json")
    assert code == 0
    assert [row["name"] for row in __import__("json").loads(out)] == list(TARGETS)
