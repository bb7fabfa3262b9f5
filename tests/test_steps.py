from mathforge import steps
from mathforge.steps import Step


def test_render_then_parse_round_trips_code_and_answer():
    solution = steps.Solution(
        steps=[Step("# 3 boxes of 14\nx = 3 * 14\nprint(x)", output="42"), Step("print(x + 1)", output="43")],
        answer=steps.boxed_answer("43"),
    )
    text = solution.render()
    assert text.count("<output>") == 2 and "<output>\n42\n</output>" in text
    parsed = steps.parse_completion(text)
    assert [s.code for s in parsed.steps] == ["# 3 boxes of 14\nx = 3 * 14\nprint(x)", "print(x + 1)"]
    assert parsed.answer == "The answer is \\boxed{43}"
    assert parsed.finished


def test_model_written_output_is_never_trusted():
    # A model that writes its own output block: the parser keeps the code and drops the fake output.
    text = "<step>\nprint(2 + 2)\n</step>\n<output>\n5\n</output>\n<answer>\n\\boxed{5}\n</answer>\n"
    parsed = steps.parse_completion(text)
    assert parsed.steps[0].code == "print(2 + 2)"
    assert parsed.steps[0].output is None
    # The stop strings stop a generator the moment it opens an output block.
    assert steps.OUTPUT_OPEN in steps.STOP_STRINGS


def test_parse_generation_classifies_chunks():
    assert steps.parse_generation("<step>\nx = 1\n</step>") == ("step", "x = 1")
    assert steps.parse_generation("<answer>\nThe answer is \\boxed{3}\n</answer>") == (
        "answer",
        "The answer is \\boxed{3}",
    )
    # Cut off by the token limit (no closing tag), empty, or a step that fakes an output.
    assert steps.parse_generation("<step>\nx = 1\nprint(")[0] == "invalid"
    assert steps.parse_generation("<step>\n</step>")[0] == "invalid"
    assert steps.parse_generation("<step>\nprint(1)\n<output>")[0] == "invalid"
    assert steps.parse_generation("hello")[0] == "invalid"


def test_errors_are_rendered_as_output_from_the_system():
    text = steps.render_solution([Step("1/0", output="", error="ZeroDivisionError: division by zero")])
    assert "<output>\nZeroDivisionError: division by zero\n</output>" in text


def test_unterminated_trailing_step_is_ignored_and_answer_ends_parsing():
    text = "<step>\nx=1\n</step>\n<answer>\n\\boxed{1}\n</answer>\n<step>\nx=2\n</step>\n"
    parsed = steps.parse_completion(text + "<step>\nprint(x")
    assert [s.code for s in parsed.steps] == ["x=1"]
