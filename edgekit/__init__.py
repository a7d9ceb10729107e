"""edgekit: take models to edge devices.

    import edgekit
    edgekit.compile_model(module, (x,), target="host", backend="tvm", output="out/m")
    model = edgekit.load("out/m"); y = model.run([x.numpy()])

The face imports lazily so device-side modules (artifact, targets, runtimes) load without torch.
"""

__version__ = "0.1.0"


def load(artifact_dir, trust=None, expect_digest=None):
    """trust: public key path the artifact must be signed by (default: $EDGEKIT_TRUST); expect_digest: manifest.json's
    sha256. See README, Trust model."""
    from edgekit.runtimes.model import load as _load

    return _load(artifact_dir, trust=trust, expect_digest=expect_digest)


def compile_model(model, example_inputs=None, **options):
    from edgekit.compile import compile_model as _compile

    return _compile(model, example_inputs, **options)
