"""The speech recognition app as edgekit sees it (apps/spec.py): Whisper tiny.en and Samba-ASR graphs, `edgekit asr`."""
from edgekit.apps.spec import AppSpec, SoakSpec

SPEC = AppSpec(
    package=__package__,
    title="Speech recognition (Whisper tiny.en, Samba-ASR)",
    soak=SoakSpec("audio"),
    order=30,
)
