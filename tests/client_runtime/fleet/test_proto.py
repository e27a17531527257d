"""The vendored Fleet protobufs are Flower 1.42's: a change in the installed flwr fails here."""

import importlib

import pytest

from client_runtime.fleet.proto import FLOWER_VERSION

MODULES = ["error", "fab", "fleet", "heartbeat", "message", "node", "recorddict", "run",
           "transport"]


def test_the_installed_flower_is_the_pinned_release():
    from importlib.metadata import version

    assert version("flwr") == FLOWER_VERSION


@pytest.mark.parametrize("name", MODULES)
def test_each_descriptor_equals_flowers(name):
    pytest.importorskip("flwr")
    ours = importlib.import_module(f"client_runtime.fleet.proto.{name}_pb2")
    theirs = importlib.import_module(f"flwr.proto.{name}_pb2")
    assert ours.DESCRIPTOR.serialized_pb == theirs.DESCRIPTOR.serialized_pb
