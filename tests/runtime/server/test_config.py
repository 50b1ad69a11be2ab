"""One ServingConfig from the CLI through load to the server: checked fields, defaults as documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from apparate_trt.cli.run import build_parser, engine_config
from apparate_trt.errors import ApparateError
from apparate_trt.runtime.config import EngineConfig
from apparate_trt.runtime.server.config import ServingConfig

SERVING_MD = Path(__file__).resolve().parents[3] / "docs" / "SERVING.md"


def test_settings_go_to_the_server_or_its_engine_and_unknown_ones_are_named() -> None:
    config = ServingConfig().replace(http_port=0, max_batch=4, max_inflight=7)
    assert config.http_port == 0 and config.max_inflight == 7 and config.engine.max_batch == 4
    with pytest.raises(ApparateError, match=r"unknown engine setting\(s\) \['max_batchh'\]"):
        ServingConfig().replace(max_batchh=4)
    with pytest.raises(ApparateError, match="at least one of the HTTP and gRPC ports"):
        ServingConfig(http_port=None, grpc_port=None)
    with pytest.raises(ApparateError, match="request timeout"):
        ServingConfig(request_timeout_s=0)
    with pytest.raises(ApparateError, match="unknown mode"):
        EngineConfig(mode="fast")
    with pytest.raises(ApparateError, match="max batch"):
        EngineConfig(max_batch=0)


def test_the_cli_flags_make_the_same_engine_config_as_the_defaults() -> None:
    args = build_parser().parse_args(["--engine-dir", "out", "--serve"])
    from_flags = engine_config(args)
    defaults = EngineConfig()
    for field in dataclasses.fields(EngineConfig):
        if field.name not in ("controller_options", "learning_options"):
            assert getattr(from_flags, field.name) == getattr(defaults, field.name), field.name
    assert from_flags.learning() == defaults.learning()


def test_serving_md_states_the_server_defaults() -> None:
    text = SERVING_MD.read_text()
    defaults = ServingConfig()
    for name in ("http_port", "grpc_port", "request_timeout_s", "drain_timeout_s", "max_connections", "max_inflight"):
        found = re.search(rf"`{name}` \((\d+(?:\.\d+)?)", text)
        assert found, f"docs/SERVING.md does not state the default of {name}"
        assert float(found.group(1)) == float(getattr(defaults, name)), name


def test_a_loaded_engine_refuses_engine_settings_at_the_server(tiny_resnet_engine) -> None:
    from apparate_trt.runtime.api import load
    from apparate_trt.runtime.server import Server

    engine = load(tiny_resnet_engine[0], threads=1)
    try:
        with pytest.raises(ApparateError, match=r"\['max_batch'\] are engine settings"):
            Server(engine, http_port=0, grpc_port=0, max_batch=4)
    finally:
        engine.close()


def test_a_queue_smaller_than_a_batch_is_refused() -> None:
    with pytest.raises(ApparateError, match="queue size 4 is below the max batch 8"):
        EngineConfig(max_batch=8, queue_size=4)
