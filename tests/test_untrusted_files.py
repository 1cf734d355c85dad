"""Untrusted files: nothing in the code can be made to run code by a file it reads, and manifest
paths stay inside the folder the user names.

1. An AST scan of every module under bayescale/, trainers/, analyses/ and benchmarks/: no
   ``shell=True`` (nor ``os.system``/``os.popen``), no pickle-family loads (``pickle``, ``dill``,
   ``joblib``, ``cloudpickle``, ``shelve``, ``pandas.read_pickle``, ``numpy.load(allow_pickle=True)``),
   no ``torch.load`` without ``weights_only=True``, no ``yaml.load`` without a safe loader, no
   ``eval``/``exec``. The scan has a self-test: a snippet breaking each rule must be caught.
2. Manifest paths (``trainers.domains.load_manifest``): ``..``, absolute paths, ``~``, symlinks
   (files, folders, globs) and a ``root`` that lead outside the manifest's folder are refused
   unless ``allow_absolute_paths = true``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bayescale.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("bayescale", "trainers", "analyses", "benchmarks")

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}
PICKLE_CALLS = {"load", "loads", "Unpickler", "open"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}
SHELL_CALLS = {"os.system", "os.popen", "os.spawnl", "os.spawnlp", "os.execl", "os.execlp", "commands.getoutput"}


class Scanner(ast.NodeVisitor):
    """Collect (line, rule) for every call that could run code from a file or a string."""

    def __init__(self):
        self.aliases: dict[str, str] = {}  # local name -> dotted origin ("pk" -> "pickle", "l" -> "pickle.loads")
        self.found: list[tuple[int, str]] = []
        self.checked: dict[str, int] = {}  # compliant calls of a watched kind, to show the scan sees them

    def visit_Import(self, node):
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}" if node.module else a.name
        self.generic_visit(node)

    def dotted(self, node) -> str:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return ""
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    def flag(self, node, rule):
        self.found.append((node.lineno, rule))

    def visit_Call(self, node):
        name = self.dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        root, last = name.split(".")[0], name.rsplit(".", 1)[-1]
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            self.flag(node, "shell=True")
        if name in SHELL_CALLS:
            self.flag(node, f"{name} runs a shell")
        if root in PICKLE_MODULES and last in PICKLE_CALLS:
            self.flag(node, f"{name} loads a pickle")
        if last == "read_pickle":
            self.flag(node, f"{name} loads a pickle")
        if name in ("numpy.load", "np.load"):
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.flag(node, "numpy.load with allow_pickle")
        if name == "torch.load":
            weights_only = keywords.get("weights_only")
            if isinstance(weights_only, ast.Constant) and weights_only.value is True:
                self.checked["torch.load"] = self.checked.get("torch.load", 0) + 1
            else:
                self.flag(node, "torch.load without weights_only=True")
        if root == "yaml" and last in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            loader_name = self.dotted(loader).rsplit(".", 1)[-1] if loader is not None else ""
            if last not in ("load", "load_all") or loader_name not in SAFE_YAML_LOADERS:
                self.flag(node, f"{name} without a safe loader")
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            self.flag(node, f"{name}()")
        if name in ("subprocess.run", "subprocess.Popen", "subprocess.check_output", "subprocess.check_call", "subprocess.call"):
            self.checked["subprocess"] = self.checked.get("subprocess", 0) + 1
        self.generic_visit(node)


def scan(source: str, filename: str = "<snippet>") -> Scanner:
    scanner = Scanner()
    scanner.visit(ast.parse(source, filename))
    return scanner


def python_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_can_be_made_to_run_code_by_what_it_reads():
    files = python_files()
    assert len(files) >= 40 and {p.relative_to(REPO).parts[0] for p in files} == set(SCANNED)
    problems, checked = [], {}
    for path in files:
        scanner = scan(path.read_text(), str(path))
        problems += [f"{path.relative_to(REPO)}:{line}: {rule}" for line, rule in scanner.found]
        for kind, n in scanner.checked.items():
            checked[kind] = checked.get(kind, 0) + n
    assert problems == []
    # The scan sees the calls it watches: the checkpoint reader's torch.load(weights_only=True).
    assert checked.get("torch.load", 0) >= 1


BAD_SNIPPETS = {
    "import subprocess\nsubprocess.run('ls', shell=True)": "shell=True",
    "from subprocess import Popen\nPopen(cmd, shell=flag)": "shell=True",
    "import os\nos.system('ls')": "runs a shell",
    "import pickle\npickle.load(f)": "loads a pickle",
    "from pickle import loads as l\nl(b)": "loads a pickle",
    "import dill as d\nd.loads(b)": "loads a pickle",
    "import joblib\njoblib.load('m.joblib')": "loads a pickle",
    "import cloudpickle\ncloudpickle.loads(b)": "loads a pickle",
    "import shelve\nshelve.open('db')": "loads a pickle",
    "import pandas as pd\npd.read_pickle('x.pkl')": "loads a pickle",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)": "allow_pickle",
    "import torch\ntorch.load('w.pt')": "torch.load without weights_only=True",
    "import torch\ntorch.load('w.pt', weights_only=False)": "torch.load without weights_only=True",
    "from torch import load\nload('w.pt', map_location='cpu')": "torch.load without weights_only=True",
    "import yaml\nyaml.load(text)": "without a safe loader",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)": "without a safe loader",
    "import yaml\nyaml.unsafe_load(text)": "without a safe loader",
    "import yaml\nyaml.full_load(text)": "without a safe loader",
    "eval('1 + 1')": "eval()",
    "exec('x = 1')": "exec()",
}

GOOD_SNIPPETS = [
    "import torch\ntorch.load('w.pt', map_location='cpu', weights_only=True)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.safe_load(text)",
    "model.eval()",
    "import subprocess\nsubprocess.run(['ls'], shell=False)",
    "import numpy as np\nnp.load('x.npy')",
    "import json\njson.loads(text)",
    "import xarray as xr\nxr.open_dataset('g.nc')",
]


@pytest.mark.parametrize("snippet, rule", list(BAD_SNIPPETS.items()), ids=list(range(len(BAD_SNIPPETS))))
def test_the_scan_catches_each_rule(snippet, rule):
    found = scan(snippet).found
    assert len(found) == 1 and rule in found[0][1], (snippet, found)


@pytest.mark.parametrize("snippet", GOOD_SNIPPETS)
def test_the_scan_passes_safe_calls(snippet):
    assert scan(snippet).found == []


# ---------------------------------------------------------------------------------------- manifest paths


@pytest.fixture
def layout(tmp_path):
    """<tmp>/data/manifest.toml with volumes in data/a/, and a volume outside data/."""
    folder = tmp_path / "data"
    for k in range(3):
        path = folder / "a" / f"a_{k}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read here")
    outside = tmp_path / "outside"
    outside.mkdir()
    for k in range(3):
        (outside / f"o_{k}.nii.gz").write_bytes(b"secret")
    return folder, outside


def _manifest(folder: Path, body: str, head: str = "") -> Path:
    path = folder / "manifest.toml"
    path.write_text(head + '[[domains]]\nname = "a"\nmodality = "ct"\n' + body + "\n")
    return path


def _load(path):
    from trainers.domains import load_manifest

    return load_manifest(path, validation_per_domain=1)


def _refused(path, *pieces):
    with pytest.raises(InputError) as info:
        _load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for piece in pieces:
        assert piece in message, message


def test_paths_inside_the_folder_load(layout):
    folder, _ = layout
    m = _load(_manifest(folder, 'glob = "a/*.nii.gz"'))
    assert all(p.is_relative_to(folder.resolve()) for d in m.domains for p in (*d.train, *d.validation))


@pytest.mark.parametrize(
    "body, pieces",
    [
        ('files = ["a/a_0.nii.gz", "../outside/o_0.nii.gz"]', ["'../outside/o_0.nii.gz' leads outside the manifest's folder"]),
        ('glob = "../outside/*.nii.gz"', ["outside the manifest's folder"]),
        ('glob = "a/../../outside/*.nii.gz"', ["outside the manifest's folder"]),
        ('files = ["{outside}/o_0.nii.gz", "a/a_0.nii.gz"]', ["is an absolute path", "allow_absolute_paths = true"]),
        ('glob = "{outside}/*.nii.gz"', ["is an absolute path"]),
        ('files = ["~/o_0.nii.gz", "a/a_0.nii.gz"]', ["is an absolute path"]),
    ],
    ids=["dotdot file", "dotdot glob", "dotdot inside glob", "absolute file", "absolute glob", "home"],
)
def test_paths_leading_outside_are_refused(layout, body, pieces):
    folder, outside = layout
    _refused(_manifest(folder, body.format(outside=outside)), "domain 'a'", *pieces)


def test_symlinks_leading_outside_are_refused(layout):
    folder, outside = layout
    (folder / "a" / "link.nii.gz").symlink_to(outside / "o_0.nii.gz")
    (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
    _refused(_manifest(folder, 'files = ["a/a_0.nii.gz", "a/link.nii.gz"]'), "outside the manifest's folder")
    _refused(_manifest(folder, 'glob = "a/*.nii.gz"'), "outside the manifest's folder")  # the link matches the glob
    _refused(_manifest(folder, 'glob = "linked_dir/*.nii.gz"'), "outside the manifest's folder")
    _refused(_manifest(folder, 'files = ["linked_dir/o_0.nii.gz", "linked_dir/o_1.nii.gz"]'), "outside the manifest's folder")


def test_a_root_outside_the_folder_is_refused(layout):
    folder, outside = layout
    _refused(_manifest(folder, 'glob = "*.nii.gz"', head='root = "../outside"\n'), "root", "outside the manifest's folder")
    _refused(_manifest(folder, 'glob = "*.nii.gz"', head=f'root = "{outside}"\n'), "root", "absolute path")


def test_absolute_paths_load_only_when_allowed_explicitly(layout):
    folder, outside = layout
    allowed = _manifest(folder, f'glob = "{outside}/*.nii.gz"', head="allow_absolute_paths = true\n")
    m = _load(allowed)
    assert [p.name for p in (*m["a"].validation, *m["a"].train)] == ["o_0.nii.gz", "o_1.nii.gz", "o_2.nii.gz"]
    (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
    assert len(_load(_manifest(folder, 'glob = "linked_dir/*.nii.gz"', head="allow_absolute_paths = true\n"))["a"].train) == 2
    # the switch is a boolean, not any truthy text
    _refused(_manifest(folder, f'glob = "{outside}/*.nii.gz"', head='allow_absolute_paths = "yes"\n'), "allow_absolute_paths")
