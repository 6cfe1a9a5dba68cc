"""The parser on the nasty cases: tags, R1 shapes, separate reasoning fields, bad bytes."""

from __future__ import annotations

import pytest

from pipelines.trace.parse import normalise, parse_trace


def test_thought_then_answer() -> None:
    parsed = parse_trace("<thought>\nStep 1: 2+3=5\n</thought>\n\\boxed{5}")
    assert (parsed.thought, parsed.answer, parsed.rejection_reason) == ("Step 1: 2+3=5", "\\boxed{5}", None)


def test_r1_think_tags_and_missing_opening_tag() -> None:
    assert parse_trace("<think>add them</think> The answer is 5.").thought == "add them"
    # R1 chat templates put "<think>\n" in the prompt, so the completion starts inside the thought.
    parsed = parse_trace("First add.\n\nThen check.\n</think>\n\n\\boxed{5}")
    assert parsed.ok and parsed.thought == "First add.\n\nThen check." and parsed.answer == "\\boxed{5}"


def test_reasoning_field_from_vllm_reasoning_parser() -> None:
    parsed = parse_trace("\\boxed{5}", reasoning="2 plus 3 is 5.")
    assert parsed.ok and parsed.thought == "2 plus 3 is 5." and parsed.answer == "\\boxed{5}"
    assert parse_trace("\\boxed{5}", reasoning="  ").rejection_reason == "empty_thought"
    assert parse_trace(None, reasoning="thinking...").rejection_reason == "no_answer"
    # Reasoning split off by the server and tags in the content again: a duplicated thought.
    assert parse_trace("<think>again</think> 5", reasoning="first").rejection_reason == "malformed_tags"


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("The answer is 5.", "no_thought"),
        ("", "no_thought"),
        (None, "no_thought"),
        ("<thought>I keep thinking and never stop", "unterminated_thought"),
        ("<thought>   </thought> 5", "empty_thought"),
        ("<thought>ok</thought>   \n ", "no_answer"),
        ("<thought>a<thought>b</thought>c</thought> 5", "malformed_tags"),
        ("<thought>a</thought><thought>b</thought> 5", "malformed_tags"),
        ("<thought>a</think> 5", "malformed_tags"),
        ("</thought> 5 <thought>", "malformed_tags"),
    ],
)
def test_rejections(completion: str | None, reason: str) -> None:
    parsed = parse_trace(completion)
    assert not parsed.ok and parsed.rejection_reason == reason


def test_case_and_spacing_of_tags() -> None:
    parsed = parse_trace("<THOUGHT >x</Thought> y")
    assert parsed.ok and (parsed.thought, parsed.answer) == ("x", "y")


def test_non_utf8_bytes_and_huge_input() -> None:
    parsed = parse_trace(b"<thought>caf\xe9 \xff</thought> \\boxed{1}")
    assert parsed.ok and "\ufffd" in parsed.thought and parsed.answer == "\\boxed{1}"
    huge = "<thought>" + "step. " * 200_000 + "</thought> 7"
    assert parse_trace(huge).answer == "7"


def test_normalise_is_what_the_student_learns() -> None:
    assert normalise(" a\n\nb ", " 5 ") == "<thought>\na\n\nb\n</thought>\n\n5"
    round_trip = parse_trace(normalise("a\n\nb", "5"))
    assert (round_trip.thought, round_trip.answer) == ("a\n\nb", "5")
