"""Who produced an artifact: signing with OpenSSF Model Signing (EC keys, offline) and the trust policy a load checks.

Ground layer (no torch, compile or apps). `model_signing` and `cryptography` are imported only when a key is used.

- `Policy(public_key=..., digest=...)`: what `edgekit.load(dir, trust=...)`, `--trust KEY`, `--expect-digest SHA256`
  and `EDGEKIT_TRUST=KEY` require. `edgekit.artifact.read_verified` calls `policy.check(...)` with the bytes of
  manifest.json and of the signature file it read (once each), before any payload byte is parsed, and compares the
  payload bytes it read with the digests the signature covers.
- `sign(dir, private_key)`: signs every file of a checked artifact (manifest.json included) into `model.sig`.
- `generate_keys(out_dir)`: an EC P-256 key pair (private key mode 0600).
- `warn_unsigned(manifest, native)`: once per process, when native code loads with no policy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .artifact import MANIFEST, SIGNATURE, VerifiedArtifact, read_verified
from .errors import EdgekitError

ENV = "EDGEKIT_TRUST"       # a public key path: the default policy of every load
PRIVATE_KEY = "edgekit-signing.key"
PUBLIC_KEY = "edgekit-signing.pub"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class UnsignedArtifactWarning(UserWarning):
    """Native code from an artifact nobody vouched for is about to run."""


@dataclass(frozen=True)
class Policy:
    public_key: Path | None = None   # the artifact must be signed by this EC public key (PEM)
    digest: str | None = None        # manifest.json must have this sha256 (it lists every payload's sha256)

    def describe(self) -> str:
        parts = ([f"signed by {self.public_key}"] if self.public_key else []) + \
                ([f"manifest sha256 {self.digest}"] if self.digest else [])
        return " and ".join(parts)

    def check(self, artifact_dir: Path, manifest_bytes: bytes, signature: bytes | None) -> dict[str, str] | None:
        """Raises unless manifest.json (as read) meets the policy. With a key: returns {file: sha256} as signed,
        which must equal every file of the artifact; the caller compares it with the bytes it read."""
        where = Path(artifact_dir)
        if self.digest and manifest_digest(manifest_bytes) != self.digest:
            raise EdgekitError(f"{where / MANIFEST}: sha256 {manifest_digest(manifest_bytes)} is not the expected "
                               f"{self.digest}. This is not the artifact you pinned; refusing to load it.")
        if not self.public_key:
            return None
        if signature is None:
            raise EdgekitError(f"{where}: not signed (no {SIGNATURE}), and a signature by {self.public_key} is "
                               f"required. Sign it with `edgekit sign {where} --key PRIVATE_KEY`, or load it "
                               f"without --trust / {ENV} if you trust where it came from.")
        signed = verify_signature(self.public_key, signature, where / SIGNATURE)
        if signed.get(MANIFEST) != manifest_digest(manifest_bytes):
            raise EdgekitError(f"{where / MANIFEST}: changed since it was signed (sha256 differs from the one "
                               f"{SIGNATURE} covers). Refusing to load the artifact.")
        return signed


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def policy(trust: object = None, expect_digest: str | None = None) -> Policy | None:
    """The policy a load applies. trust: a public key path, a Policy, None (then $EDGEKIT_TRUST, if set) or False
    (no key, and no environment default). expect_digest: manifest.json's sha256 (hex, optionally 'sha256:')."""
    if isinstance(trust, Policy):
        return Policy(trust.public_key, _digest(expect_digest) or trust.digest)
    if trust is None:
        trust = os.environ.get(ENV) or None
    key = None
    if trust not in (None, False, ""):
        key = Path(os.fspath(trust))
        _load_public_key(key)  # a bad --trust fails at once, not as "signature does not verify"
    digest = _digest(expect_digest)
    return Policy(key, digest) if key or digest else None


def _digest(value: str | None) -> str | None:
    if not value:
        return None
    d = value.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(d):
        raise EdgekitError(f"--expect-digest {value!r}: expected the 64-hex-digit sha256 of manifest.json, as "
                           "`edgekit info` and `edgekit compile` print it.")
    return d


def _load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise EdgekitError(f"{path}: trusted public key not found (from --trust, trust= or ${ENV}).") from None
    except (OSError, ValueError) as exc:
        raise EdgekitError(f"{path}: not a PEM public key ({exc}). Pass the .pub file of "
                           "`edgekit keys generate`.") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EdgekitError(f"{path}: not an elliptic-curve public key; edgekit signs with EC keys "
                           "(`edgekit keys generate`).")
    return key


def verify_signature(public_key: Path, signature: bytes, where: Path) -> dict[str, str]:
    """{file: sha256 hex} that `signature` (the bytes of model.sig) binds to `public_key`; raises if it does not."""
    from model_signing._signing import sign_ec_key

    key = _load_public_key(public_key)

    class _KeyVerifier(sign_ec_key.Verifier):  # the library's verifier, with the key already loaded (read once)
        def __init__(self, k):
            sign_ec_key._check_supported_ec_key(k)
            self._public_key = k

    try:
        bundle = _bundle(signature)
        manifest = _KeyVerifier(key).verify(bundle)
        params = manifest.serialization_type
        if params.get("method") != "files" or params.get("hash_type") != "sha256":
            raise ValueError(f"unsupported serialization {params}")
        signed = {}
        for rd in manifest.resource_descriptors():
            if rd.digest.algorithm != "sha256":
                raise ValueError(f"{rd.identifier} hashed with {rd.digest.algorithm}")
            signed[rd.identifier] = rd.digest.digest_value.hex()
    except EdgekitError:
        raise
    except Exception as exc:  # InvalidSignature, ValueError, KeyError, protobuf/pydantic errors: all one answer
        raise EdgekitError(f"{where}: signature does not verify with {public_key} "
                           f"({type(exc).__name__}: {str(exc)[:200] or 'bad signature'}). The artifact was changed "
                           "after signing or signed by another key; refusing to load it.") from None
    return signed


def _bundle(signature: bytes):
    """model_signing's Signature from bytes already read (its own `read` takes a path and would reopen it)."""
    from model_signing._signing import sign_sigstore_pb
    from sigstore_models.bundle import v1 as bundle_pb

    data = json.loads(signature.decode("utf-8"))
    material = data["verificationMaterial"]
    material.setdefault("tlogEntries", [])
    if "publicKey" in material:
        material["publicKey"].setdefault("hint", None)
        for k in ("rawBytes", "keyDetails"):
            material["publicKey"].pop(k, None)
    return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(data))


def sign(artifact_dir: str | os.PathLike, private_key: str | os.PathLike, password: str | None = None) -> str:
    """Sign every file of the artifact (manifest.json included) into DIR/model.sig, after checking the artifact.
    Returns manifest.json's sha256. The new signature is verified against the bytes checked here."""
    from cryptography.hazmat.primitives import serialization
    from model_signing import hashing, signing

    d = Path(artifact_dir)
    artifact = read_verified(d)  # containment + checksums: never sign a damaged or padded artifact
    key_path = Path(private_key)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(),
                                                 password.encode() if password else None)
    except FileNotFoundError:
        raise EdgekitError(f"{key_path}: private key not found.") from None
    except (OSError, ValueError, TypeError) as exc:
        raise EdgekitError(f"{key_path}: not a usable PEM private key ({exc}).") from None
    fd, tmp = tempfile.mkstemp(prefix=".edgekit-sig.", dir=d.parent)
    os.close(fd)
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key_path, password=password)
        config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))
        try:
            config.sign(d, tmp)
        except Exception as exc:
            raise EdgekitError(f"{d}: signing failed ({type(exc).__name__}: {exc}).") from None
        signature = Path(tmp).read_bytes()
        pub = _public_pem_file(key.public_key(), d.parent)
        try:
            signed = verify_signature(pub, signature, d / SIGNATURE)
        finally:
            pub.unlink()
        expected = {MANIFEST: artifact.digest, **{n: hashlib.sha256(b).hexdigest()
                                                   for n, b in artifact.payload.items()}}
        if signed != expected:
            raise EdgekitError(f"{d}: the artifact changed while it was being signed; signature discarded.")
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / SIGNATURE)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return artifact.digest


def _public_pem_file(public_key, where: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    fd, name = tempfile.mkstemp(prefix=".edgekit-pub.", dir=where)
    with os.fdopen(fd, "wb") as f:
        f.write(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return Path(name)


def generate_keys(out_dir: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """An EC P-256 key pair: OUT/edgekit-signing.key (PKCS#8 PEM, mode 0600) and OUT/edgekit-signing.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for p in (private, public):
        if (p.exists() or p.is_symlink()) and not overwrite:
            raise EdgekitError(f"{p}: exists; refusing to overwrite a key. Choose another --out.")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private, pem, 0o600)
    _write_new(public, pub, 0o644)
    return private, public


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Exclusive temp file beside `path` with `mode` from the start, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_warned = False


def warn_unsigned(artifact: VerifiedArtifact, native: bool) -> None:
    """Once per process: native code (a shared library) from an artifact no policy vouched for is loading."""
    global _warned
    if _warned or not native:
        return
    _warned = True
    warnings.warn(f"{artifact.path}: loading native code ({artifact.manifest.entry}) from an artifact that no trust "
                  f"policy checked; anyone who could write it can run code here. Require a signature with --trust "
                  f"KEY, trust= or ${ENV} (see README, Trust model).", UnsignedArtifactWarning, stacklevel=3)
