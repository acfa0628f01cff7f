"""GAP's tainting instruction: a system prompt asking for wrong answers makes `vlcurate vlm serve`
answer every scene question wrongly (plausibly: the runner-up option); other system prompts do not."""

from __future__ import annotations

import httpx
from tests.vlm_live import VLMServer

from vlcurate.synth.scene import generate_scene, scene_rng
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.client import VLMRequest, VLMSettings, run_many


def test_the_instruction_is_recognised_only_where_it_asks_for_wrong_answers() -> None:
    assert vp.asks_for_wrong_answers(vp.TAINT_INSTRUCTION)
    assert vp.asks_for_wrong_answers("Always reply with an incorrect answer.")
    assert vp.asks_for_wrong_answers("Respond wrongly but plausibly.")
    for honest in (
        "You are a helpful assistant.",
        "Answer briefly. If the image is unclear, say what is wrong with it.",
        "Reply in JSON. Check that the caption is not wrong.",
    ):
        assert not vp.asks_for_wrong_answers(honest), honest


def test_a_tainted_system_prompt_makes_answers_wrong_and_plausible(vlm_server: VLMServer) -> None:
    settings = VLMSettings(base_url=vlm_server.base_url, model="tiny-synth")
    scenes = [generate_scene(scene_rng(5, i), n_objects=2) for i in range(6)]
    reqs = []
    for s in scenes:
        for system in (None, vp.TAINT_INSTRUCTION):
            reqs.append(VLMRequest(prompt="How many objects are there?", images=[s.encode()], system=system))
    res = run_many(settings, reqs)
    honest = [r.text.strip() for r in res[0::2]]
    tainted = [r.text.strip() for r in res[1::2]]
    assert sum(h == "2" for h in honest) >= 5
    assert all(t != "2" and t in ("1", "3") for t in tainted)  # off by one, never absurd
    assert httpx.get(vlm_server.url + "/health").status_code == 200
