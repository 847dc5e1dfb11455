#!/usr/bin/env python3
"""Build release artifacts for quartproxy.

    python deploy/release.py --out dist/

Needs on the running interpreter: the ``build`` package, a pip >= 22.3 (for ``pip --python``),
and optionally ``cyclonedx-bom`` (its ``cyclonedx-py`` command) for the SBOM; without it a
minimal CycloneDX 1.5 SBOM is written from ``importlib.metadata`` (``--sbom builtin`` forces that).

Output, one directory per build:

    dist/quartproxy-<version>-<sha>/
        quartproxy-<version>.tar.gz              sdist
        quartproxy-<version>-py3-none-any.whl    wheel
        quartproxy-<version>.cdx.json            CycloneDX SBOM of the installed wheel + deps
        BUILD-INFO.json                          version, commit, build time, tools, artifacts
        SHA256SUMS                               sha256sum -c compatible, every file above

Naming: the artifacts keep the exact names the build backend gave them. A wheel's file name is
part of its format (``{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl``), and its version
must equal the ``Version`` inside its METADATA: renaming the file to ``0.1.0+g1a2b3c4`` would make
pip reject it, and a local version (``+...``) cannot be uploaded to PyPI anyway. So the commit goes
in the directory name, BUILD-INFO.json and the SBOM instead.

Source: by default the sources of the commit (``git archive HEAD``) are built, so the artifacts
match the SHA in the directory name even when the work tree has uncommitted changes.
``--worktree`` builds the work tree as it is; the directory then ends in ``-dirty`` when git
reports changes. ``SOURCE_DATE_EPOCH`` is set to the commit time, so rebuilding the same commit
gives wheels with the same file timestamps.

Exit codes: 0 ok, 1 error (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CYCLONEDX_SPEC = "1.5"

# Runs inside the throwaway venv: what is installed there, straight from importlib.metadata.
_DUMP_METADATA = r"""
import json, importlib.metadata as md
out = []
for dist in md.distributions():
    meta = dist.metadata
    out.append({
        "name": meta["Name"],
        "version": dist.version,
        "summary": meta.get("Summary") or "",
        "license": meta.get("License-Expression") or meta.get("License") or "",
        "classifiers": [
            c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")
        ],
        "requires": meta.get_all("Requires-Dist") or [],
    })
print(json.dumps(out))
"""


class ReleaseError(Exception):
    pass


def log(message: str) -> None:
    print(f"release: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ReleaseError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed:\n" + "\n".join(tail))
    return proc.stdout


def git(*args: str) -> str:
    return run(["git", "-C", str(REPO), *args]).strip()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize(name: str) -> str:
    return "".join("-" if c in "_." else c for c in name.lower())


# --------------------------------------------------------------------------- source + build


def export_commit(commit: str, into: Path) -> None:
    archive = into.parent / "source.tar"
    run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), commit])
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()


def build(source: Path, outdir: Path, epoch: str) -> tuple[Path, Path]:
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch)
    # sdist first, then the wheel from the unpacked sdist: proves the sdist is complete.
    run([sys.executable, "-m", "build", "--outdir", str(outdir), str(source)], env=env)
    sdists = sorted(outdir.glob("*.tar.gz"))
    wheels = sorted(outdir.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise ReleaseError(f"expected one sdist and one wheel, got {sdists + wheels}")
    return sdists[0], wheels[0]


# --------------------------------------------------------------------------- SBOM


def make_env_with(wheel: Path, venv: Path) -> Path:
    """A venv holding only the wheel and its dependencies (no pip, no setuptools)."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run(
        [
            sys.executable, "-m", "pip", "--python", str(python), "install",
            "--no-cache-dir", "--disable-pip-version-check", "--no-input", str(wheel),
        ]
    )  # fmt: skip
    return python


def sbom_cyclonedx_py(python: Path, pyproject: Path, out: Path) -> None:
    tool = shutil.which("cyclonedx-py") or str(Path(sys.executable).parent / "cyclonedx-py")
    run(
        [
            tool, "environment",
            "--pyproject", str(pyproject),
            "--mc-type", "application",
            "--sv", CYCLONEDX_SPEC,
            "--of", "JSON",
            "--output-reproducible",
            "-o", str(out),
            str(python),
        ]
    )  # fmt: skip


def _marker_ok(requirement: str) -> bool | None:
    """Whether a Requires-Dist line applies here; None when that cannot be told."""
    if ";" not in requirement:
        return True
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return None
    req = Requirement(requirement)
    return req.marker is None or req.marker.evaluate({"extra": ""})


def _req_name(requirement: str) -> str:
    head = requirement.split(";", 1)[0]
    for stop in "[<>=!~ (":
        head = head.split(stop, 1)[0]
    return normalize(head.strip())


def sbom_builtin(python: Path, root_name: str, root_version: str, out: Path, epoch: str) -> None:
    """Minimal CycloneDX 1.5 JSON: every installed distribution as a library component with
    its PyPI purl and license text, plus the dependency graph from Requires-Dist."""
    dists = json.loads(run([str(python), "-c", _DUMP_METADATA]))
    by_name = {normalize(d["name"]): d for d in dists}
    root_key = normalize(root_name)
    if root_key not in by_name:
        raise ReleaseError(f"{root_name} is not installed in the SBOM environment")

    def ref(key: str) -> str:
        return f"pkg:pypi/{key}@{by_name[key]['version']}"

    def component(key: str, kind: str) -> dict[str, Any]:
        dist = by_name[key]
        comp: dict[str, Any] = {
            "type": kind,
            "bom-ref": ref(key),
            "name": dist["name"],
            "version": dist["version"],
            "purl": ref(key),
        }
        if dist["summary"]:
            comp["description"] = dist["summary"]
        names = [dist["license"]] if dist["license"] and len(dist["license"]) < 200 else []
        names += [c.rsplit("::", 1)[-1].strip() for c in dist["classifiers"]]
        if names:
            comp["licenses"] = [{"license": {"name": n}} for n in dict.fromkeys(names)]
        return comp

    dependencies = []
    for key, dist in sorted(by_name.items()):
        deps = sorted(
            {
                ref(_req_name(r))
                for r in dist["requires"]
                if _req_name(r) in by_name and _marker_ok(r)
            }
        )
        dependencies.append({"ref": ref(key), "dependsOn": deps})

    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC,
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ref(root_key) + '/' + epoch)}",
        "version": 1,
        "metadata": {
            "timestamp": dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "tools": {
                "components": [
                    {"type": "application", "name": "quartproxy deploy/release.py (builtin)"}
                ]
            },
            "component": component(root_key, "application"),
        },
        "components": [component(k, "library") for k in sorted(by_name) if k != root_key],
        "dependencies": dependencies,
    }
    out.write_text(json.dumps(bom, indent=2) + "\n", encoding="utf-8")


def check_sbom(path: Path, root_name: str, root_version: str) -> int:
    """Light structural check of either SBOM flavour; returns the component count."""
    bom = json.loads(path.read_text(encoding="utf-8"))
    if bom.get("bomFormat") != "CycloneDX" or bom.get("specVersion") != CYCLONEDX_SPEC:
        raise ReleaseError(f"{path.name}: not a CycloneDX {CYCLONEDX_SPEC} document")
    root = bom.get("metadata", {}).get("component", {})
    if (
        normalize(root.get("name", "")) != normalize(root_name)
        or root.get("version") != root_version
    ):
        raise ReleaseError(f"{path.name}: root component is {root!r}")
    components = bom.get("components", [])
    if not components:
        raise ReleaseError(f"{path.name}: no components (dependencies were not installed?)")
    return len(components)


def add_commit_properties(path: Path, commit: str, dirty: bool) -> None:
    bom = json.loads(path.read_text(encoding="utf-8"))
    props = bom["metadata"].setdefault("properties", [])
    props.append({"name": "quartproxy:git:commit", "value": commit})
    props.append({"name": "quartproxy:git:dirty", "value": str(dirty).lower()})
    path.write_text(json.dumps(bom, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="parent output dir")
    parser.add_argument("--commit", default="HEAD", help="commit to build (default HEAD)")
    parser.add_argument(
        "--worktree", action="store_true", help="build the work tree instead of the commit"
    )
    parser.add_argument(
        "--sbom",
        choices=["auto", "cyclonedx-py", "builtin"],
        default="auto",
        help="auto: cyclonedx-py when installed, else builtin",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output dir")
    return parser.parse_args(argv)


def release(args: argparse.Namespace) -> Path:
    commit = git("rev-parse", "--verify", f"{args.commit}^{{commit}}")
    short = git("rev-parse", "--short=8", commit)
    epoch = git("log", "-1", "--format=%ct", commit)
    dirty = False
    if args.worktree:
        if args.commit != "HEAD":
            raise ReleaseError(
                "--worktree builds the work tree; it cannot be combined with --commit"
            )
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))

    with tempfile.TemporaryDirectory(prefix="quartproxy-release-") as tmp_name:
        tmp = Path(tmp_name)
        if args.worktree:
            source = REPO
        else:
            source = tmp / "src"
            export_commit(commit, source)
        project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
        name: str = project["project"]["name"]
        version: str = project["project"]["version"]

        stage = tmp / "artifacts"
        stage.mkdir()
        sdist, wheel = build(source, stage, epoch)
        log(f"built {sdist.name}, {wheel.name}")

        python = make_env_with(wheel, tmp / "sbom-venv")
        sbom = stage / f"{name}-{version}.cdx.json"
        tool_ok = (
            shutil.which("cyclonedx-py") or (Path(sys.executable).parent / "cyclonedx-py").exists()
        )
        if args.sbom == "cyclonedx-py" or (args.sbom == "auto" and tool_ok):
            sbom_cyclonedx_py(python, source / "pyproject.toml", sbom)
            sbom_tool = "cyclonedx-py"
        else:
            if args.sbom == "auto":
                log("cyclonedx-py not installed: writing the builtin minimal SBOM")
            sbom_builtin(python, name, version, sbom, epoch)
            sbom_tool = "builtin"
        add_commit_properties(sbom, commit, dirty)
        count = check_sbom(sbom, name, version)
        log(f"SBOM ({sbom_tool}): {count} components")

        info = {
            "name": name,
            "version": version,
            "commit": commit,
            "commit_short": short,
            "dirty": dirty,
            "source": "worktree" if args.worktree else "git archive",
            "source_date_epoch": int(epoch),
            "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "sbom_tool": sbom_tool,
            "artifacts": {p.name: sha256(p) for p in (sdist, wheel, sbom)},
        }
        (stage / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
        files = sorted(p for p in stage.iterdir() if p.is_file())
        (stage / "SHA256SUMS").write_text(
            "".join(f"{sha256(p)}  {p.name}\n" for p in files), encoding="utf-8"
        )

        out_dir = Path(args.out).resolve()
        final = out_dir / f"{name}-{version}-{short}{'-dirty' if dirty else ''}"
        if final.exists():
            if not args.force:
                raise ReleaseError(f"{final} exists (use --force to replace it)")
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(stage, final)
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        final = release(args)
    except (ReleaseError, OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    for path in sorted(final.iterdir()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
