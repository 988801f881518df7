"""The memory plan read from a real device: what another allocation takes is no longer planned for, and parts that
cannot fit are refused before an engine starts."""

from __future__ import annotations

import pytest
import torch

from harness.errors import PlannedOutOfMemory
from harness.memory_plan import GIB, plan_engine

pytestmark = pytest.mark.gpu


def test_the_plan_follows_what_is_free(policy_05b, figures):
    before = plan_engine(policy_05b, "bfloat16", 512, 64, snapshot=True, runtime_gib=4.0)
    held = torch.empty(int(8 * GIB), dtype=torch.uint8, device="cuda")  # what a scorer beside it would hold
    after = plan_engine(policy_05b, "bfloat16", 512, 64, snapshot=True, runtime_gib=4.0)
    figures.update(before=before.model_dump(), after=after.model_dump())
    assert before.free_gib - after.free_gib == pytest.approx(8.0, abs=0.5)
    assert before.kv_cache_gib - after.kv_cache_gib == pytest.approx(8.0, abs=0.5)
    assert [p.name for p in after.needs][:2] == ["policy weights", "ES snapshot of the weights"]
    assert after.needs[0].gib == pytest.approx(0.92, abs=0.1)  # 494 M bf16 parameters
    del held
    torch.cuda.empty_cache()
    # what is free now, not at the start: an earlier test's engine may still have been leaving the device then
    free_now = torch.cuda.mem_get_info()[0] / GIB
    too_much = plan_engine(policy_05b, "bfloat16", 512, 64, snapshot=True, runtime_gib=free_now)
    with pytest.raises(PlannedOutOfMemory, match="does not fit"):
        too_much.check("the ES policy engine")
