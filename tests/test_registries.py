import importlib
import sys
import types

import pytest

import registries
from registries import Registry


def test_register_get_and_error_names_field_value_allowed():
    reg = Registry("widget", "model.widget")

    @reg.register("a")
    class A:
        pass

    @reg.register()
    class B:
        name = "b"

    assert reg.get("a") is A and reg.get("b") is B and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match=r"model.widget='c' is not a known widget; allowed: \['a', 'b'\]"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("Other", (), {}))
    with pytest.raises(TypeError, match="needs a name"):
        reg.register()(type("Nameless", (), {}))


def test_package_discovery_and_plugins(tmp_path, monkeypatch):
    pkg = tmp_path / "toykinds"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from registries import Registry\nREG = Registry('toy', 'toy.name', package='toykinds', skip=('infra',))\n"
    )
    (pkg / "one.py").write_text("from toykinds import REG\n@REG.register('one')\ndef one(): return 1\n")
    (pkg / "infra.py").write_text("raise RuntimeError('infrastructure must not be imported')\n")
    (tmp_path / "toyplugin.py").write_text("from toykinds import REG\n@REG.register('two')\ndef two(): return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registries.PLUGINS_ENV, "toyplugin")
    monkeypatch.setattr(registries, "_plugins_loaded", False)
    try:
        reg = importlib.import_module("toykinds").REG
        assert reg.names() == ["one", "two"] and reg.get("two")() == 2
    finally:
        for name in ("toykinds", "toykinds.one", "toyplugin"):
            sys.modules.pop(name, None)
        monkeypatch.setattr(registries, "_plugins_loaded", False)


def test_registries_imports_nothing_of_the_project():
    src = open(registries.__file__).read()
    for pkg in ("models", "tasks", "pipeline", "scripts"):
        assert f"import {pkg}" not in src and f"from {pkg}" not in src
    assert isinstance(registries, types.ModuleType)
