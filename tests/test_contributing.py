"""CONTRIBUTING.md's "Add a routing method", run exactly as written, both ways (issue 12, item 7).

The code blocks are read out of the document itself: a Python block whose first line is
``# <path>`` is that file; the TOML block is the plugin's entry point. A contributor who copies
them gets a routing that registers, validates its options and runs through ``ConvCaps``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import capsbench.capsules.routing as routing_package
from capsbench import spec
from capsbench.errors import SpecError
from capsbench.registry import ROUTINGS, register_builtins

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of the routing section, dedented."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text[text.index("## Add a routing method"):text.index("### What tests cover it automatically")]
    return [(lang, textwrap.dedent(code)) for _, lang, code in FENCE.findall(section)]


def named_file(path: str) -> str:
    """The Python block that starts with ``# <path>``."""
    found = [code for lang, code in blocks() if lang == "python" and code.startswith(f"# {path}\n")]
    assert len(found) == 1, f"CONTRIBUTING.md has no single python block for {path}"
    return found[0]


def entry_point() -> tuple[str, str]:
    """``(name, "module:attr")`` from the TOML block."""
    (toml,) = [code for lang, code in blocks() if lang == "toml"]
    assert '[project.entry-points."capsbench.plugins"]' in toml
    name, value = toml.splitlines()[1].split("=", 1)
    return name.strip(), ast.literal_eval(value.strip())


def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("model: {routing: my_routing, backbone: tiny, capsule_types: 4, primary_types: 4}\n")
    return path


@pytest.fixture
def inside_capsbench(tmp_path):
    """The module dropped into capsbench/capsules/routing/ (a temp folder on that package's path)."""
    folder = tmp_path / "routing_dir"
    folder.mkdir()
    (folder / "my_routing.py").write_text(named_file("capsbench/capsules/routing/my_routing.py"))
    routing_package.__path__.append(str(folder))
    yield
    routing_package.__path__.remove(str(folder))
    ROUTINGS.unregister("my_routing")
    sys.modules.pop("capsbench.capsules.routing.my_routing", None)


def test_inside_capsbench_module_plus_lazy_entry(inside_capsbench, tmp_path):
    entry = named_file("capsbench/registry.py: _BUILTINS[ROUTINGS]")
    table = ast.literal_eval("{" + entry.split("\n", 1)[1] + "}")
    register_builtins({ROUTINGS: table})  # as registry.py does with _BUILTINS

    cls = ROUTINGS.get("my_routing")  # imports the module: its decorator replaces its own lazy entry
    assert cls.__name__ == "MyRouting" and ROUTINGS.source("my_routing") == "capsbench"

    from capsbench.capsules import Capsules, ConvCaps

    layer = ConvCaps(4, 3, 3, 1, 1, routing="my_routing", pose_dim=16, eps=1e-6)
    out = layer(Capsules(torch.randn(2, 4, 16, 5, 5), torch.rand(2, 4, 5, 5)))
    assert out.pose.shape == (2, 3, 16, 5, 5) and out.activation.shape == (2, 3, 5, 5)
    assert 0 <= float(out.activation.min()) and float(out.activation.max()) <= 1

    path = spec_file(tmp_path)
    assert spec.load(path, ["model.routing_options.eps=1e-6"])
    with pytest.raises(SpecError, match=r"model\.routing_options\.epss: unknown option .*did you mean 'eps'"):
        spec.load(path, ["model.routing_options.epss=1e-6"])
    with pytest.raises(SpecError, match=r"model\.routing_options\.eps: expected a number > 0, got 0"):
        spec.load(path, ["model.routing_options.eps=0"])


def test_a_module_never_replaces_another_components_entry(inside_capsbench):
    register_builtins({ROUTINGS: {"my_routing": "capsbench.capsules.routing.em:EMRouting"}})
    with pytest.raises(ValueError, match="'my_routing' is already registered"):
        import capsbench.capsules.routing.my_routing  # noqa: F401 - the import registers


def test_registering_something_that_is_not_a_routing_is_one_line(inside_capsbench):
    from capsbench.errors import UserError

    with pytest.raises(UserError, match=r"^routing 'not_one': expected a subclass of "
                                        r"capsbench\.capsules\.routing\.base\.Routing, got class .*\.Plain$"):
        @ROUTINGS.register("not_one")
        class Plain:
            pass
    assert "not_one" not in ROUTINGS


def test_own_package_through_the_entry_point(tmp_path):
    name, target = entry_point()
    module, _, func = target.partition(":")
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_routing.py").write_text(named_file("capsbench/capsules/routing/my_routing.py"))
    (tmp_path / f"{module.replace('.', '/')}.py").write_text(named_file("my_package/capsbench_plugin.py"))
    info = tmp_path / "my_package-0.1.dist-info"  # what `pip install my_package` leaves
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[capsbench.plugins]\n{name} = {module}:{func}\n")
    # one thread per subprocess: the suite runs one worker per core
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1")

    def capsbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "capsbench", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    listed = capsbench("list", "routings")
    assert listed.returncode == 0 and "my_routing" in listed.stdout.split(), listed.stderr
    path = spec_file(tmp_path)
    assert capsbench("validate", str(path), "model.routing_options.eps=1e-6").returncode == 0
    bad = capsbench("validate", str(path), "model.routing_options.epss=1e-6")
    assert bad.returncode == 2 and "did you mean 'eps'" in bad.stderr
    run = capsbench("run", str(path), "data.subset=60", "data.test_subset=30", "data.image_size=8",
                    "train.epochs=1", "train.max_steps_per_epoch=2",
                    "--out", str(tmp_path / "runs"), "--quiet")
    assert run.returncode == 0, run.stderr[-2000:]
