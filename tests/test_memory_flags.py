"""ComfyUI's memory flags on the command line reach the model manager with ComfyUI's meanings."""
from __future__ import annotations

import pytest

import server
from graph_runtime.model_manager import VramMode, manager_for

GB = 1 << 30


def manager(*flags: str):
    options = server.build_options(server.build_parser().parse_args(["serve", *flags]))
    return options, manager_for(options)


def test_defaults_are_normal_vram_with_smart_memory():
    options, mm = manager()
    assert options.device == "auto" and mm.mode is VramMode.NORMAL and mm.smart_memory and mm.reserve_bytes == 0


@pytest.mark.parametrize("flag,mode", [("--highvram", VramMode.HIGH), ("--lowvram", VramMode.LOW),
                                       ("--novram", VramMode.NO)])
def test_vram_modes(flag, mode):
    assert manager(flag)[1].mode is mode


def test_cpu_puts_everything_on_the_cpu():
    options, mm = manager("--cpu")
    assert options.device == "cpu" and mm.mode is VramMode.CPU
    assert manager("--cpu", "--lowvram")[1].mode is VramMode.CPU  # --cpu wins, as in ComfyUI


def test_reserve_vram_and_disable_smart_memory():
    _, mm = manager("--reserve-vram", "1.5", "--disable-smart-memory")
    assert mm.reserve_bytes == int(1.5 * GB) and not mm.smart_memory


def test_the_vram_modes_exclude_each_other():
    with pytest.raises(SystemExit):
        manager("--lowvram", "--highvram")
