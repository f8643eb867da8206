"""The generic registry: decorator and lazy entries, did-you-mean, entry-point plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capsbench.errors import UserError
from capsbench.registry import REGISTRIES, ROUTINGS, Registry


def test_decorator_and_get():
    reg = Registry("widget")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and "a" in reg and reg.names() == ["a"]
    assert reg.source("a") == "capsbench"


def test_lazy_entry_is_imported_on_first_get():
    reg = Registry("widget")
    reg.register("join", "os.path:join")
    assert reg._entries["join"] == "os.path:join"  # not imported yet
    assert reg.get("join") is os.path.join
    assert reg._entries["join"] is os.path.join  # cached


def test_unknown_name_suggests_the_closest():
    reg = Registry("widget")
    reg.register("dynamic", object())
    with pytest.raises(UserError, match=r"unknown widget 'dynamik' \(did you mean 'dynamic'\?\); available: dynamic"):
        reg.get("dynamik")
    with pytest.raises(UserError, match=r"^model\.routing: unknown widget 'zzz'; expected one of: dynamic$"):
        reg.check("zzz", "model.routing")


def test_duplicate_registration_is_an_error_unless_replace():
    reg = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", 2)
    reg.register("x", 2, replace=True)
    assert reg.get("x") == 2


def test_every_builtin_kind_is_listed_and_routings_are_the_papers():
    assert set(REGISTRIES) == {
        "routings", "models", "backbones", "datasets", "losses", "metrics", "optimizers", "schedulers"
    }
    assert {"em", "vb", "self", "dynamic"} <= set(ROUTINGS.names())
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "smallnorb", "imagewoof"} <= set(REGISTRIES["datasets"])


def _fake_distribution(root: Path, body: str, entry: str = "myplug = my_capsplugin:register") -> None:
    """An installed distribution as pip leaves it: a module plus a .dist-info with entry_points.txt."""
    (root / "my_capsplugin.py").write_text(textwrap.dedent(body))
    info = root / "my_capsplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-capsplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[capsbench.plugins]\n{entry}\n")


def _capsbench(args: list[str], pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(
        [sys.executable, "-m", "capsbench", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_entry_point_plugin_registers_a_routing(tmp_path):
    _fake_distribution(tmp_path, """
        from capsbench.registry import ROUTINGS

        def register():
            ROUTINGS.register("plugged", "my_capsplugin:Plugged")

        class Plugged:
            pass
    """)
    result = _capsbench(["list", "routings"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "plugged" in result.stdout.split()
    assert {"em", "vb", "self", "dynamic"} <= set(result.stdout.split())


def test_plugin_component_is_attributed_to_its_plugin(tmp_path):
    _fake_distribution(tmp_path, """
        from capsbench.registry import LOSSES

        @LOSSES.register("plugged_loss")
        def plugged_loss():
            pass
    """, entry="myplug = my_capsplugin")
    code = "from capsbench.registry import LOSSES; print(LOSSES.source('plugged_loss'))"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "myplug", out.stderr


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    _fake_distribution(tmp_path, "raise RuntimeError('boom')\n", entry="broken = my_capsplugin")
    result = _capsbench(["list", "losses"], tmp_path)
    assert result.returncode == 0
    assert "plugin 'broken'" in result.stderr and "boom" in result.stderr
    assert "spread" in result.stdout.split()
