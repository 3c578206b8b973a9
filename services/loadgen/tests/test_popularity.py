"""popularity.py: the Zipf-like spread of requests over models, and reading a repository."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from servescope.cli.paths import heldout_dir
from servescope.loadgen.popularity import ModelPicker, repository_models, zipf_weights
from servescope.loadgen.traffic import LoadConfig, LoadResult, run_load

NAMES = [f"model-{i:02d}" for i in range(50)]


def test_weights_follow_one_over_rank_to_the_s() -> None:
    weights = zipf_weights(3, 1.0)
    assert weights == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)
    assert sum(zipf_weights(50, 1.1)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        zipf_weights(0, 1.1)
    with pytest.raises(ValueError):
        zipf_weights(3, -0.5)


def test_fifty_models_are_skewed_and_all_reached() -> None:
    picker = ModelPicker(NAMES, s=1.1, seed=3)
    picks = Counter(picker.pick() for _ in range(20_000))
    expected = zipf_weights(50, 1.1)
    # The top model takes 1/H(50, 1.1) = 26% of requests, the last 0.35%.
    assert expected[0] == pytest.approx(0.2612, abs=1e-3)
    assert expected[-1] == pytest.approx(0.0035, abs=1e-4)
    assert picks[NAMES[0]] / 20_000 == pytest.approx(expected[0], abs=0.01)
    assert set(picks) == set(NAMES)  # every model reached, the tail too
    assert picks[NAMES[0]] > 3 * picks[NAMES[4]] > 0
    # The ten most popular take 70%; a uniform spread would give them a fifth.
    top_ten = sum(picks[name] for name in NAMES[:10]) / 20_000
    assert top_ten == pytest.approx(sum(expected[:10]), abs=0.02)
    assert top_ten > 0.65


def test_the_same_seed_repeats_the_sequence_and_another_does_not() -> None:
    def run(seed: int) -> list[str]:
        picker = ModelPicker(NAMES, seed=seed)
        return [picker.pick() for _ in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_name_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        ModelPicker(["a", "b", "a"])


def test_repository_models_are_the_directories_with_a_card(tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "mid"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model-card.json").write_text(json.dumps({"name": name}))
    (tmp_path / "no-card").mkdir()
    (tmp_path / "repository.json").write_text("{}")
    assert repository_models(tmp_path) == ["alpha", "mid", "zeta"]
    with pytest.raises(ValueError, match="holds no model"):
        repository_models(tmp_path / "no-card")


def test_requests_go_to_each_model_route() -> None:
    """Against a real HTTP server: every request hits /v1/models/{name}/predict."""
    seen: Counter[str] = Counter()

    async def predict(request: web.Request) -> web.Response:
        seen[request.match_info["name"]] += 1
        await request.read()
        return web.json_response({"label": "7"})

    async def scenario() -> LoadResult:
        app = web.Application()
        app.router.add_post("/v1/models/{name}/predict", predict)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            config = LoadConfig(
                url=f"http://127.0.0.1:{port}",
                heldout_dir=heldout_dir(),
                rate=2000.0,
                duration=0,
                requests=300,
                concurrency=8,
                models=["big", "medium", "small"],
                zipf_s=1.1,
            )
            return await run_load(config, None)
        finally:
            await runner.cleanup()

    result = asyncio.run(scenario())
    assert seen == result.by_model
    assert sum(seen.values()) == 300
    assert seen["big"] > seen["medium"] > seen["small"] > 0
    assert result.ok == 300
    assert sum(result.labelled_by_model.values()) == 300
    assert "requests by model (3 models): big" in result.summary()
