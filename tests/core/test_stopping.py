from edgespec.core.stopping import ClippedTokens, clip_to_stop


def test_block_without_stop_is_kept_whole() -> None:
    assert clip_to_stop([5, 6, 7], eos_ids={2}, budget=10) == ClippedTokens([5, 6, 7], finished=False)


def test_eos_inside_block_ends_generation_and_is_kept() -> None:
    assert clip_to_stop([5, 2, 7], eos_ids={2}, budget=10) == ClippedTokens([5, 2], finished=True)


def test_budget_inside_block_cuts_the_block() -> None:
    assert clip_to_stop([5, 6, 7], eos_ids={2}, budget=2) == ClippedTokens([5, 6], finished=True)


def test_budget_reached_exactly_at_block_end_finishes() -> None:
    assert clip_to_stop([5, 6], eos_ids=set(), budget=2) == ClippedTokens([5, 6], finished=True)


def test_commit_says_why_generation_ended() -> None:
    assert clip_to_stop([5, 2, 7], eos_ids={2}, budget=10).reason == "eos"
    assert clip_to_stop([5, 6, 7], eos_ids={2}, budget=2).reason == "length"
    assert clip_to_stop([5, 6], eos_ids={2}, budget=10).reason == ""
