import pytest

from edgespec.core.config import GenerationConfig


def test_early_verdicts_are_spelled_auto_on_or_off_everywhere() -> None:
    assert [GenerationConfig.early_verdicts_from(text) for text in ("auto", "on", "off")] == [None, True, False]
    with pytest.raises(ValueError, match="auto, on or off"):
        GenerationConfig.early_verdicts_from("yes")
