"""The super-resolution app as edgekit sees it (apps/spec.py): CFSR x2/x3/x4, `edgekit superres`, its bench cases."""
from edgekit.apps.spec import AppSpec, SoakSpec

SPEC = AppSpec(
    package=__package__,
    title="CFSR single-image super-resolution (x2, x3, x4)",
    default_model="x4",  # `make compile MODEL=superres`
    # Upscaling takes low-resolution input: the 768x576 soak video itself took 20-40 s a frame (31 frames in
    # 10 minutes), too few to show a leak; a quarter-size copy (192x144 -> 768x576 at x4) gives many more. The
    # compiled path is the one users deploy.
    soak=SoakSpec("video", downscale=4, extra_args=("--backend", "onnxruntime")),
    order=10,
)
