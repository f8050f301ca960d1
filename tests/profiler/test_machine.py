"""The processor probes (runtime/machine.py) read /proc files as Linux writes them, and the
comparison of recorded processors (planner/domain/processor.py). Fake /proc files under
tmp_path; no torch."""

from __future__ import annotations

import os

import pytest

from planner.domain.processor import Processor, recorded_elsewhere, same_processor
from runtime import machine

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
stepping\t: 8
flags\t\t: fpu vme

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
"""
NVIDIA_VERSIONS = {
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
    "GCC version:  gcc version 12.2.0\n": "550.54.15",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\n":
        "570.86.15",
}


def test_cpu_model_name_is_the_first_model_name_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert machine.cpu_model_name(cpuinfo) == "Intel(R) Xeon(R) Platinum 8488C"
    cpu = machine.cpu_processor(threads=1, torch_version="2.13.0+cpu", cpuinfo=cpuinfo)
    assert (cpu.kind, cpu.logical_cores, cpu.threads, cpu.torch_version) == (
        "cpu", os.cpu_count(), 1, "2.13.0+cpu")
    assert cpu.cpu_model == "family 6 model 143 stepping 8"


def test_cpu_family_model_is_empty_without_x86_lines(tmp_path):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")
    assert machine.cpu_family_model(arm) == ""
    assert machine.cpu_family_model(tmp_path / "missing") == ""


def test_cpu_model_name_falls_back_to_platform(tmp_path, monkeypatch):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")
    monkeypatch.setattr(machine.platform, "processor", lambda: "aarch64-ish")
    assert machine.cpu_model_name(arm) == "aarch64-ish"
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    assert machine.cpu_model_name(tmp_path / "missing") == "aarch64"


@pytest.mark.parametrize("text,version", NVIDIA_VERSIONS.items())
def test_nvidia_driver_version_of_both_kernel_modules(tmp_path, text, version):
    path = tmp_path / "version"
    path.write_text(text)
    assert machine.nvidia_driver_version(path) == version


def test_cuda_processors_from_the_driver_files(tmp_path):
    gpus = tmp_path / "gpus"
    for bus, model in (("0000:19:00.0", "NVIDIA H100 80GB HBM3"),
                       ("0000:3b:00.0", "NVIDIA H100 80GB HBM3")):
        (gpus / bus).mkdir(parents=True)
        (gpus / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 97\nGPU UUID: \t GPU-1\n")
    version = tmp_path / "version"
    version.write_text(next(iter(NVIDIA_VERSIONS)))
    found = machine.cuda_processors(gpus, version)
    assert [(p.kind, p.name, p.driver_version) for p in found] == \
        [("cuda", "NVIDIA H100 80GB HBM3", "550.54.15")] * 2
    assert machine.cuda_processors(tmp_path / "no-driver", version) == []


def test_same_processor_is_kind_and_name_whatever_the_spacing_and_case():
    a = Processor(kind="cpu", name="Intel(R) Xeon(R)  Processor", logical_cores=2, threads=1)
    b = Processor(kind="cpu", name="intel(r) xeon(r) processor", logical_cores=16)
    gpu = Processor(kind="cuda", name="Intel(R) Xeon(R) Processor")
    other = Processor(kind="cpu", name="AMD EPYC 7B13", logical_cores=2)
    assert same_processor(a, b) and not same_processor(a, gpu) and not same_processor(a, other)
    assert not recorded_elsewhere(a, [other, b])
    assert recorded_elsewhere(a, [other]) and recorded_elsewhere(None, [a])


def test_alike_names_of_other_families_are_other_processors():
    zen3 = Processor(kind="cpu", name="AMD EPYC", cpu_model="family 25 model 1 stepping 1")
    zen5 = Processor(kind="cpu", name="AMD EPYC", cpu_model="family 26 model 2 stepping 1")
    unrecorded = Processor(kind="cpu", name="AMD EPYC")
    assert not same_processor(zen3, zen5)
    assert same_processor(zen3, unrecorded) and same_processor(unrecorded, zen5)
    assert zen5.describe() == "AMD EPYC (family 26 model 2 stepping 1)"


def test_processor_describes_and_writes_only_its_kinds_fields():
    cpu = Processor(kind="cpu", name="AMD EPYC 7B13", logical_cores=4, threads=1,
                    torch_version="2.13.0")
    gpu = Processor(kind="cuda", name="NVIDIA H100 80GB HBM3", driver_version="550.54.15",
                    cuda_version="12.4")
    assert cpu.describe() == "AMD EPYC 7B13, 4 logical cores"
    assert gpu.describe() == "NVIDIA H100 80GB HBM3, driver 550.54.15"
    assert cpu.as_mapping() == {"kind": "cpu", "name": "AMD EPYC 7B13", "logical_cores": 4,
                                "threads": 1, "torch_version": "2.13.0"}
    assert Processor(**gpu.as_mapping()) == gpu
