"""Provenance of a protocol table: which machines its records ran on, and when they mix."""

from __future__ import annotations

from capsbench.results import provenance


def _env(isa: str | None, mode: str = "native", cpu: str = "AMD EPYC", gpu: str | None = None) -> dict:
    numerics = {"mode": mode, "threads": 1} | ({"aten_cpu_capability": isa} if isa else {})
    return {"cpu_model": cpu, "gpu": gpu, "torch": "2.14.1", "python": "3.11.7", "numerics": numerics}


def test_native_records_of_one_cpu_model_with_two_instruction_sets_are_mixed():
    # one spec trained on an AVX-512 and on an AVX2 EPYC gives different numbers under native numerics
    prov = provenance.summary([{"environment": _env("AVX512")}] * 3 + [{"environment": _env("AVX2")}])
    assert prov["mixed"]
    assert [(e["hardware"], e["records"]) for e in prov["environments"]] == [("AMD EPYC (AVX2)", 1),
                                                                             ("AMD EPYC (AVX512)", 3)]
    assert provenance.text(prov).startswith("MIXED ENVIRONMENTS")


def test_portable_records_do_not_split_by_instruction_set():
    # portable numerics pins the dispatch (its capability reads DEFAULT everywhere): the machines agree bit for bit
    prov = provenance.summary([{"environment": _env("DEFAULT", mode="portable")},
                               {"environment": _env(None, mode="portable")}])
    assert not prov["mixed"] and prov["environments"][0]["hardware"] == "AMD EPYC"
    assert provenance.text(prov) == "AMD EPYC · torch 2.14.1 · Python 3.11.7 · numerics portable (2 records)"


def test_gpu_and_older_records():
    assert provenance.describe(_env("AVX512", gpu="NVIDIA H200"))["hardware"] == "NVIDIA H200"
    assert provenance.describe({"machine": "x86_64"})["hardware"] == "unknown x86_64 CPU"
    assert provenance.describe(_env(None))["hardware"] == "AMD EPYC"  # a record from before the field existed
