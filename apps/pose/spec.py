"""The pose app as edgekit sees it (apps/spec.py): BlazePose detector/landmarks and the 3D lifter, `edgekit pose`."""
from edgekit.apps.spec import AppSpec, SoakSpec

SPEC = AppSpec(
    package=__package__,
    title="BlazePose 2D pose estimation with KTPFormer 3D lifting",
    soak=SoakSpec("video"),
    order=20,
)
