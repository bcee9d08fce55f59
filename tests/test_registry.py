"""Registry: decorator registration, duplicate errors, override, unregister and scoped registration."""
from __future__ import annotations

import operator

import pytest

from prunekit.errors import ConfigError
from prunekit.graph import register_op
from prunekit.graph.ops import FUNCTION_RULES, METHOD_RULES, elementwise
from prunekit.registry import Registry


def one():
    return 1


def two():
    return 2


def test_register_by_decorator_and_by_add():
    reg = Registry("widget")

    @reg.register("first")
    def first():
        return "f"

    reg.add("second", two)
    reg.register()(one)  # unnamed: registered under the function's __name__
    assert reg.names() == ["first", "one", "second"]
    assert reg.get("first") is first and reg.create("second") == 2 and "one" in reg and len(reg) == 3
    assert list(reg) == ["first", "one", "second"]


def test_unknown_name_lists_the_known_ones():
    reg = Registry("widget")
    reg.add("alpha", one)
    with pytest.raises(ConfigError, match=r"unknown widget 'beta'; known widgets: 'alpha'"):
        reg.get("beta")
    assert reg.find("beta") is None and reg.find("beta", two) is two and reg.find("alpha") is one


def test_duplicate_raises_and_keeps_the_first():
    reg = Registry("widget")
    reg.add("a", one)
    with pytest.raises(ConfigError, match=r"widget 'a' is already registered; pass override=True"):
        reg.add("a", two)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a")(two)
    assert reg.get("a") is one


def test_override_replaces():
    reg = Registry("widget")
    reg.add("a", one)
    reg.add("a", two, override=True)
    assert reg.get("a") is two and len(reg) == 1


def test_unregister_removes_and_returns_the_entry():
    reg = Registry("widget")
    reg.add("a", one)
    assert reg.unregister("a") is one
    assert "a" not in reg and len(reg) == 0
    with pytest.raises(ConfigError, match=r"cannot unregister widget 'a': it is not registered"):
        reg.unregister("a")


def test_scoped_registers_for_the_block_only():
    reg = Registry("widget")
    reg.add("keep", one)
    with reg.scoped("tmp", two) as obj:
        assert obj is two and reg.get("tmp") is two
    assert reg.names() == ["keep"]


def test_scoped_duplicate_without_override_raises_and_changes_nothing():
    reg = Registry("widget")
    reg.add("a", one)
    with pytest.raises(ConfigError, match="already registered"):
        with reg.scoped("a", two):
            pytest.fail("the block must not run")
    assert reg.get("a") is one and len(reg) == 1


def test_scoped_override_puts_the_overridden_entry_back():
    reg = Registry("widget")
    reg.add("a", one)
    with reg.scoped("a", two, override=True):
        assert reg.get("a") is two
    assert reg.get("a") is one and reg.names() == ["a"]


def test_scoped_restores_on_exception():
    reg = Registry("widget")
    reg.add("a", one)
    with pytest.raises(RuntimeError, match="boom"):
        with reg.scoped("a", two, override=True), reg.scoped("b", two):
            raise RuntimeError("boom")
    assert reg.names() == ["a"] and reg.get("a") is one


def test_scoped_restores_even_if_the_block_unregisters_the_name():
    reg = Registry("widget")
    with reg.scoped("tmp", one):
        reg.unregister("tmp")
    assert len(reg) == 0


def test_non_string_keys_work_and_are_named_in_messages():
    reg = Registry("rule")
    reg.add(operator.add, one)
    reg.add("add", two)
    assert reg.get(operator.add) is one and reg.names() == ["add", operator.add]
    with pytest.raises(ConfigError, match=r"rule _operator.add is already registered"):
        reg.add(operator.add, two)
    assert [] not in reg  # unhashable: never registered, no TypeError


def test_op_rule_tables_are_registries():
    assert isinstance(FUNCTION_RULES, Registry) and isinstance(METHOD_RULES, Registry)
    assert FUNCTION_RULES.get(operator.add) is elementwise and METHOD_RULES.get("add") is elementwise


def test_register_op_duplicate_raises_and_registers_nothing():
    def rule(p, node):
        return None

    class Fresh:  # a callable target no rule knows
        pass

    with pytest.raises(ConfigError, match="already registered"):
        register_op(Fresh, "pk_test_fresh_method", operator.add)(rule)
    assert Fresh not in FUNCTION_RULES and "pk_test_fresh_method" not in METHOD_RULES
    assert FUNCTION_RULES.get(operator.add) is elementwise


def test_register_op_override_and_restore():
    def rule(p, node):
        return None

    register_op("pk_test_method")(rule)
    try:
        assert METHOD_RULES.get("pk_test_method") is rule
    finally:
        METHOD_RULES.unregister("pk_test_method")
    with FUNCTION_RULES.scoped(operator.add, rule, override=True):
        assert FUNCTION_RULES.get(operator.add) is rule
    assert FUNCTION_RULES.get(operator.add) is elementwise
