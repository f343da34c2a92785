"""Routing as a table: every combination of inputs and targets, planned without a model."""

import pytest

from unite_search.planner import PlanError, QueryPlan, plan_query

ALL = {name: {"rows": 5, "index": {"type": "flat"}} for name in ("image", "video", "text", "image+text", "video+text")}
ALL["video"] = {"rows": 500_000, "index": {"type": "ivf", "nprobe": 16}}
INPUTS = {
    "text": {"text": "a fox"},
    "image": {"image": "a.jpg"},
    "video": {"video": "a.mp4"},
    "image+text": {"image": "a.jpg", "text": "at night"},
    "video+text": {"video": "a.mp4", "text": "at night"},
    "image+video": {"image": "a.jpg", "video": "a.mp4"},
    "image+video+text": {"image": "a.jpg", "video": "a.mp4", "text": "t"},
}
DEFAULT_ROUTES = {
    "text": ("image", "video"),
    "image": ("image",),
    "video": ("video",),
    "image+text": ("image",),
    "video+text": ("video",),
    "image+video": ("video",),
    "image+video+text": ("video",),
}
TARGETS = [
    ("text", ("text",)),
    ("image", ("image",)),
    ("video", ("video",)),
    ("image+text", ("image+text",)),
    ("text+image", ("image+text",)),  # any order names the same shard
    ("video+text", ("video+text",)),
    (["image", "video"], ("image", "video")),
    (["video", "image", "video"], ("video", "image")),
    ("all", ("image", "image+text", "text", "video", "video+text")),
]


@pytest.mark.parametrize("query", sorted(INPUTS))
def test_default_routes(query):
    plan = plan_query(ALL, **INPUTS[query])
    assert plan.shards == DEFAULT_ROUTES[query]
    assert plan.routed_by == "default"
    assert plan.merge == ("rrf" if len(plan.shards) > 1 else "cosine")
    assert plan.exclude_reference == (query in ("image+text", "video+text", "image+video+text"))
    assert "+".join(plan.modalities) == {"image+text": "text+image", "video+text": "text+video",
                                          "image+video": "image+video", "image+video+text": "text+image+video"}.get(
        query, query)  # fmt: skip


@pytest.mark.parametrize("query", sorted(INPUTS))
@pytest.mark.parametrize(("target", "shards"), TARGETS)
def test_target_overrides_the_route(query, target, shards):
    plan = plan_query(ALL, target=target, **INPUTS[query])
    assert plan.shards == shards
    assert plan.routed_by == "target"
    assert plan.merge == ("rrf" if len(shards) > 1 else "cosine")


def test_plan_is_frozen_data_with_search_parameters():
    plan = plan_query(ALL, text="a fox", k=7, where="width > 10", exclude=["x1"])
    assert isinstance(plan, QueryPlan)
    with pytest.raises(AttributeError):
        plan.k = 3
    image, video = plan.targets
    assert (image.shard, image.k, image.index, image.nprobe) == ("image", 7, "flat", None)
    assert (video.shard, video.k, video.index, video.nprobe, video.rows) == ("video", 7, "ivf", 16, 500_000)
    text = plan.explain()
    assert "route     image, video (default)" in text
    assert "video: top 7 of 500000 rows, IVF, nprobe 16" in text
    assert "reciprocal-rank fusion" in text and "filter    width > 10" in text and "exclude   x1" in text
    assert plan.prompt.endswith(
        "a fox\nSummary above sentence in one word:<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    )


def test_instruction_is_part_of_the_prompt_and_makes_text():
    plan = plan_query(ALL, video="a.mp4", instruction="Find a video that matches this change:")
    assert plan.shards == ("video",) and plan.modalities == ("text", "video")
    assert "Find a video that matches this change:\nSummary above sentence and video" in plan.prompt
    composed = plan_query(ALL, video="a.mp4", text="at night", instruction="Change:")
    assert "Change: at night\n" in composed.prompt


def test_like_searches_the_rows_own_shard_and_leaves_the_row_out():
    plan = plan_query(ALL, like="abc@0-30", like_shard="video", target="video")
    assert plan.shards == ("video",) and plan.exclude_ids == ("abc@0-30",) and "stored vector" in plan.explain()
    for shard in ("text", "image+text", "video"):  # without a target too (not the text query's media shards)
        plan = plan_query(ALL, like="abc", like_shard=shard)
        assert plan.shards == (shard,) and plan.merge == "cosine"
    with pytest.raises(PlanError, match="no row with id"):
        plan_query(ALL, like="missing")
    with pytest.raises(PlanError, match="alone"):
        plan_query(ALL, like="abc", like_shard="video", text="x")
    with pytest.raises(PlanError, match="without text, an instruction"):  # the instruction is named too
        plan_query(ALL, like="abc", like_shard="video", instruction="Find more.")


@pytest.mark.parametrize(
    ("shards", "kwargs", "message"),
    [
        (ALL, {}, "needs text, an image"),
        (ALL, {"text": "   "}, "non-empty"),
        (ALL, {"text": "x", "k": 0}, "positive integer"),
        (ALL, {"text": "x", "target": "audio"}, "unknown target 'audio'"),
        (ALL, {"text": "x", "target": []}, "empty list"),
        ({"text": ALL["text"]}, {"text": "x"}, "neither"),
        ({"text": ALL["text"]}, {"image": "a.jpg"}, "does not have"),
        ({"image": ALL["image"]}, {"text": "x", "target": "video"}, "no video shard"),
    ],
)
def test_plan_errors(shards, kwargs, message):
    with pytest.raises(PlanError, match=message):
        plan_query(shards, **kwargs)


def test_an_index_without_shards_plans_an_empty_search():
    plan = plan_query({}, text="x", target="all")
    assert plan.shards == () and "(none)" in plan.explain()


def test_merge_results_is_a_pure_rule_over_shard_lists():
    from unite_search.planner import RRF_K, merge_results

    def rows(*ids):
        return [{"id": i} for i in ids]

    image = list(zip(rows("a", "b", "c"), [0.9, 0.5, 0.1], strict=True))
    video = list(zip(rows("x", "y"), [0.3, 0.2], strict=True))
    # one shard: by cosine, cut at k
    assert [(s, r["id"], c, f) for s, r, c, f in merge_results("cosine", 2, [("image", image)])] == [
        ("image", "a", 0.9, None), ("image", "b", 0.5, None)]  # fmt: skip
    # several: reciprocal-rank fusion; equal fused scores fall back to the higher cosine
    fused = merge_results("rrf", 4, [("image", image), ("video", video)])
    assert [(s, r["id"]) for s, r, _, _ in fused] == [("image", "a"), ("video", "x"), ("image", "b"), ("video", "y")]
    assert fused[0][3] == pytest.approx(1 / (RRF_K + 1)) and fused[2][3] == pytest.approx(1 / (RRF_K + 2))
    # the same id in two shards is two results; inputs are left as they were
    twice = merge_results("rrf", 10, [("image", rows_a := list(zip(rows("a"), [0.4], strict=True))),
                                      ("video", list(zip(rows("a"), [0.8], strict=True)))])  # fmt: skip
    assert [(s, c) for s, _, c, _ in twice] == [("video", 0.8), ("image", 0.4)] and rows_a[0][1] == 0.4
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_results("max", 3, [])
