"""Runs the notebooks in colab/ as a fresh Colab runtime would and keeps their outputs in sync.

Run:    python tools/sync_notebooks.py            # re-execute every notebook, save its outputs
        python tools/sync_notebooks.py --check    # exit 1 if one's code changed since its run
        python tools/sync_notebooks.py finetune   # only colab/finetune.ipynb

Each notebook runs in a new kernel whose environment lacks jaxvision (but has its
dependencies), with a wheel built from this checkout as JAXVISION_SOURCE: the notebook's
own first cell installs it, as it installs from the git URL on Colab. The run's code is
fingerprinted in the notebook's metadata, so a notebook whose code changed after its
outputs were saved fails `--check` (and tests/test_notebook.py). The install cell's git
URL and the Colab badges come from pyproject.toml's [project.urls] Source; `--check` also
fails on a README that links another GitHub address.
"""

import argparse
import hashlib
import json
import os
import re
import site
import subprocess
import sys
import tempfile
import tomllib

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("quickstart", "finetune", "explain", "distill", "ablation", "compress")
# A repository's owner/name in a GitHub or an "Open in Colab" link.
_GITHUB = r"(?:github\.com|colab\.research\.google\.com/github)/([\w.-]+/[\w.-]+)"
KERNEL = "jaxvision-fresh"
_SOURCE_LINE = re.compile(r'^SOURCE = os\.environ\.get\("JAXVISION_SOURCE", "([^"]*)"\)$', re.M)


def source_url() -> str:
    """The project's git URL, from pyproject.toml (the one place it is written)."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Source"]


def install_url(nb: nbformat.NotebookNode) -> str:
    """The git URL the notebook's first code cell installs from by default."""
    first = next(c for c in nb.cells if c.cell_type == "code")
    found = _SOURCE_LINE.search(first.source)
    return found.group(1) if found else ""


def set_install_url(nb: nbformat.NotebookNode, url: str) -> None:
    """Points the notebook's install cell (and its Colab badge) at `url`."""
    first = next(c for c in nb.cells if c.cell_type == "code")
    if not _SOURCE_LINE.search(first.source):
        raise ValueError("the first code cell has no SOURCE = os.environ.get(...) line")
    first.source = _SOURCE_LINE.sub(
        f'SOURCE = os.environ.get("JAXVISION_SOURCE", "git+{url}")', first.source
    )
    badge = colab_badge(url, nb.metadata.get("jaxvision", {}).get("name", ""))
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "colab-badge.svg" in cell.source:
            cell.source = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", badge, cell.source)


def colab_badge(url: str, name: str) -> str:
    """The "Open in Colab" badge of colab/NAME.ipynb on the main branch of `url`."""
    repo = url.removeprefix("https://github.com/").removesuffix(".git")
    link = f"https://colab.research.google.com/github/{repo}/blob/main/colab/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})"


def code_fingerprint(nb: nbformat.NotebookNode) -> str:
    """sha256 of the notebook's code cells: what its saved outputs were produced from."""
    code = "\n# ---\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def build_wheel(dest: str) -> str:
    """A wheel of this checkout in `dest`: with this environment's setuptools when it has
    one (no network), else in pip's isolated build environment."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest, REPO]
    done = subprocess.run([*pip_wheel, "--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(pip_wheel, check=True, capture_output=True)
    return os.path.join(dest, next(f for f in os.listdir(dest) if f.endswith(".whl")))


def _stand_in_for_tensorflow(shared: str) -> None:
    """Lets a `tensorflow-cpu` install satisfy the wheel's `tensorflow` requirement (both ship
    the same `tensorflow` package), so the install cell needs no download."""
    names = os.listdir(shared)
    cpu = [n for n in names if re.fullmatch(r"tensorflow_cpu-[^-]+\.dist-info", n)]
    if not cpu or any(re.fullmatch(r"tensorflow-[^-]+\.dist-info", n) for n in names):
        return
    version = cpu[0].removeprefix("tensorflow_cpu-").removesuffix(".dist-info")
    info = os.path.join(shared, f"tensorflow-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: tensorflow\nVersion: {version}\n")


def fresh_kernel(work: str, wheel: str) -> KernelSpecManager:
    """A kernel in a new venv that sees this environment's packages except jaxvision, so a
    notebook's own install cell must install it (a dependency-sized download is avoided)."""
    os.makedirs(work, exist_ok=True)
    venv = os.path.join(work, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    shared = os.path.join(work, "shared-site-packages")
    os.makedirs(shared)
    for base in site.getsitepackages():
        for entry in os.listdir(base):
            # jaxvision's own files and the editable-install hooks stay out.
            if entry.startswith(("jaxvision", "__editable__", "_jaxvision")) or entry.endswith(
                ".pth"
            ):
                continue
            if not os.path.exists(os.path.join(shared, entry)):
                os.symlink(os.path.join(base, entry), os.path.join(shared, entry))
    _stand_in_for_tensorflow(shared)
    (target,) = [
        os.path.join(top, d) for top, dirs, _ in os.walk(venv) for d in dirs if d == "site-packages"
    ]
    with open(os.path.join(target, "shared_site_packages.pth"), "w") as f:
        f.write(shared + "\n")
    spec_dir = os.path.join(work, "kernels", KERNEL)
    os.makedirs(spec_dir)
    python = os.path.join(venv, "bin", "python")
    # The wheel's dependencies are already there: pip needs no index and no site config.
    env = {
        "JAXVISION_SOURCE": wheel,
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PYTHONPATH": "",
        "PYTHONNOUSERSITE": "1",
    }
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(
            {
                "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxvision (fresh)",
                "language": "python",
                "env": env,
            },
            f,
        )
    return KernelSpecManager(kernel_dirs=[os.path.join(work, "kernels")])


def execute(
    nb: nbformat.NotebookNode, specs: KernelSpecManager, cwd: str, timeout: int = 900
) -> nbformat.NotebookNode:
    """Runs `nb` top to bottom in a new kernel from `specs`, in `cwd` (like Colab's /content)."""
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    try:
        NotebookClient(nb, km=km, timeout=timeout, resources={"metadata": {"path": cwd}}).execute()
    finally:
        if km.has_kernel:  # a client given its kernel manager leaves the kernel running
            km.shutdown_kernel(now=True)
    return nb


def refresh(names: list[str]) -> None:
    """Re-executes the named notebooks and saves them with their outputs and fingerprint."""
    with tempfile.TemporaryDirectory() as work:
        wheel = build_wheel(os.path.join(work, "dist"))
        for name in names:
            specs = fresh_kernel(os.path.join(work, f"kernel-{name}"), wheel)
            path = os.path.join(COLAB, f"{name}.ipynb")
            nb = nbformat.read(path, as_version=4)
            nb.metadata.setdefault("jaxvision", {})["name"] = name
            set_install_url(nb, source_url())
            cwd = os.path.join(work, f"content-{name}")
            os.makedirs(cwd)
            execute(nb, specs, cwd)
            nb.metadata["jaxvision"]["code_sha256"] = code_fingerprint(nb)
            nbformat.write(nb, path)
            print(f"refreshed {path}")


def readme_problems() -> list[str]:
    """GitHub addresses in the READMEs that are not the project's (pyproject.toml's) own."""
    own = source_url().removeprefix("https://github.com/")
    problems = []
    for readme in ("README.md", os.path.join("colab", "README.md")):
        with open(os.path.join(REPO, readme)) as f:
            text = f.read()
        for found in sorted(set(re.findall(_GITHUB, text))):
            if found.removesuffix(".git") != own:
                problems.append(f"{readme}: links github.com/{found}, not {own}")
    return problems


def stale(names: list[str]) -> list[str]:
    """Why each named notebook is out of sync with its saved outputs ([] when all are)."""
    problems = []
    for name in names:
        nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
        saved = nb.metadata.get("jaxvision", {}).get("code_sha256")
        if saved != code_fingerprint(nb):
            problems.append(f"colab/{name}.ipynb: code changed since its outputs were saved")
        if install_url(nb) != f"git+{source_url()}":
            problems.append(f"colab/{name}.ipynb: installs from {install_url(nb)!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Refreshes the notebooks' outputs, or with --check reports stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.names) + readme_problems()
        for p in problems:
            print(p, "(refresh: python tools/sync_notebooks.py)")
        return 1 if problems else 0
    refresh(args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
