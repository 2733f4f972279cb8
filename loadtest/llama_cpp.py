"""llama.cpp, the peer of ortserve's LLM benchmarks: `llama-server` and `llama-perplexity` built once from
the llama.cpp tree that the `llama-cpp-python` sdist vendors, cached under .bench/llama.cpp/.

    python -m loadtest.llama_cpp      # builds (about 10 minutes on 2 cores), prints the binaries' paths"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from loadtest.peer_servers import VENVS

SDIST = "llama-cpp-python==0.3.36"
BUILD = VENVS / "llama.cpp"
TARGETS = ("llama-server", "llama-perplexity")


def binary(target: str) -> Path:
    return BUILD / "build" / "bin" / target


def built() -> dict[str, Path]:
    """Each target's binary, built first where any is missing; raises RuntimeError saying why a build
    failed (its log is under .bench/llama.cpp/)."""
    if not all(binary(target).exists() for target in TARGETS):
        _build()
    return {target: binary(target) for target in TARGETS}


def _build() -> None:
    source = BUILD / "source"
    if not (source / "CMakeLists.txt").exists():
        _unpack(source)
    log = BUILD / "build.log"
    with log.open("w") as out:
        for step in (["cmake", "-S", str(source), "-B", str(BUILD / "build"), "-G", "Ninja",
                      "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
                      "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
                     ["cmake", "--build", str(BUILD / "build"), "--target", *TARGETS, "-j", "2"]):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"building llama.cpp failed at `{' '.join(step[:3])}`: see {log}")


def _unpack(source: Path) -> None:
    """llama.cpp's tree out of the sdist (vendor/llama.cpp), fetched with pip."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--dest", scratch, SDIST], check=True, capture_output=True)
        archive = next(Path(scratch).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            root = tar.getnames()[0].split("/")[0]
            prefix = f"{root}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix):]
            source.mkdir(parents=True, exist_ok=True)
            tar.extractall(source, members=members, filter="data")


if __name__ == "__main__":
    for name, path in built().items():
        print(f"{name}: {path}")
