"""The chimp app as edgekit sees it (apps/spec.py): detector and behavior head, `edgekit chimp`, its bench cases."""
from edgekit.apps.spec import AppSpec

SPEC = AppSpec(
    package=__package__,
    title="Chimpanzee tracking and behavior recognition (AlphaChimp-style, edge scale)",
    order=40,
)
