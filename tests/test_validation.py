"""Each validation error type, produced by a real bad prompt, in ComfyUI's shapes."""
from __future__ import annotations

import pytest

from graph_runtime.validation import PromptValidator


@pytest.fixture
def validate(stub_registry, base_dir):
    return PromptValidator(stub_registry, base_dir).validate


def good():
    return {
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "add": {"class_type": "StubAdd", "inputs": {"a": ["c", 0]}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["add", 0]}},
    }


def only_error(result, node_id):
    assert not result.ok
    assert result.error.type == "prompt_outputs_failed_validation"
    errors = result.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def test_a_good_prompt_validates_and_lists_its_outputs(validate):
    result = validate(good())
    assert result.ok and result.outputs == ["o"] and result.node_errors == {}


def test_empty_prompt(validate):
    assert validate({}).error.type == "no_prompt"


def test_unknown_class_type_is_reported_by_name(validate):
    prompt = good()
    prompt["x"] = {"class_type": "NoSuchNode", "inputs": {}}
    result = validate(prompt)
    assert result.error.type == "invalid_prompt"
    assert "NoSuchNode" in result.error.message and "#x" in result.error.details


def test_missing_class_type(validate):
    prompt = good()
    prompt["x"] = {"inputs": {}}
    result = validate(prompt)
    assert result.error.type == "invalid_prompt" and "class_type" in result.error.message


def test_prompt_without_outputs(validate):
    prompt = good()
    del prompt["o"]
    assert validate(prompt).error.type == "prompt_no_outputs"


def test_required_input_missing(validate):
    prompt = good()
    del prompt["add"]["inputs"]["a"]
    err = only_error(validate(prompt), "add")
    assert err["type"] == "required_input_missing" and err["extra_info"]["input_name"] == "a"
    assert validate(prompt).node_errors["add"]["dependent_outputs"] == ["o"]


def test_bad_linked_input(validate):
    prompt = good()
    prompt["add"]["inputs"]["a"] = ["c", 0, 1]
    assert only_error(validate(prompt), "add")["type"] == "bad_linked_input"
    prompt["add"]["inputs"]["a"] = ["missing", 0]
    err = only_error(validate(prompt), "add")
    assert err["type"] == "bad_linked_input" and "missing" in err["details"]
    prompt["add"]["inputs"]["a"] = ["c", 3]
    assert "slot 3" in only_error(validate(prompt), "add")["details"]


def test_return_type_mismatch(validate):
    prompt = good()
    prompt["img"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    prompt["add"]["inputs"]["a"] = ["img", 0]
    err = only_error(validate(prompt), "add")
    assert err["type"] == "return_type_mismatch"
    assert err["details"] == "a, received_type(IMAGE) mismatch input_type(INT)"


def test_invalid_input_type(validate):
    prompt = good()
    prompt["c"]["inputs"]["value"] = "twelve"
    err = only_error(validate(prompt), "c")
    assert err["type"] == "invalid_input_type" and "INT" in err["message"]


def test_literal_given_to_a_socket_input(validate):
    prompt = {"i": {"class_type": "ImageInvert", "inputs": {"image": 5}},
              "o": {"class_type": "PreviewImage", "inputs": {"images": ["i", 0]}}}
    err = only_error(validate(prompt), "i")
    assert err["type"] == "invalid_input_type" and "must be linked" in err["message"]


def test_value_smaller_than_min_and_bigger_than_max(validate):
    prompt = good()
    prompt["c"]["inputs"]["value"] = -5000
    assert only_error(validate(prompt), "c")["type"] == "value_smaller_than_min"
    prompt["c"]["inputs"]["value"] = 5000
    err = only_error(validate(prompt), "c")
    assert err["type"] == "value_bigger_than_max" and err["message"] == "Value 5000 bigger than max of 1000"


def test_value_not_in_list(validate):
    prompt = {"e": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "s": {"class_type": "ImageScale", "inputs": {"image": ["e", 0], "upscale_method": "sideways",
                                                            "width": 4, "height": 4, "crop": "disabled"}},
              "o": {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}}}
    err = only_error(validate(prompt), "s")
    assert err["type"] == "value_not_in_list" and "sideways" in err["details"]


def test_missing_input_file_is_a_clear_error(validate):
    prompt = {"l": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
              "o": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
    err = only_error(validate(prompt), "l")
    assert err["type"] == "custom_validation_failed" and "nope.png" in err["details"]


def test_custom_validation_failed(validate):
    prompt = {"v": {"class_type": "StubCustomValidation", "inputs": {"value": 3, "scale": 1.0}},
              "o": {"class_type": "StubOutput", "inputs": {"value": ["v", 0]}}}
    err = only_error(validate(prompt), "v")
    assert err["type"] == "custom_validation_failed" and "must be even" in err["details"]
    prompt["v"]["inputs"]["value"] = 4
    assert validate(prompt).ok


def test_cycles_are_reported_explicitly(validate):
    prompt = good()
    prompt["add"]["inputs"]["b"] = ["add2", 0]
    prompt["add2"] = {"class_type": "StubAdd", "inputs": {"a": ["add", 0]}}
    result = validate(prompt)
    assert result.error.type == "prompt_outputs_failed_validation"
    assert "cycle" in result.error.details.lower()
    assert {"add", "add2"} <= set(result.node_errors)
    assert result.node_errors["add"]["errors"][0]["type"] == "dependency_cycle"


def test_literals_are_coerced_in_the_validated_copy(validate):
    prompt = good()
    prompt["c"]["inputs"]["value"] = "7"
    prompt["sw"] = {"class_type": "StubLazySwitch", "inputs": {"choose": "false", "on_true": ["c", 0]}}
    prompt["o2"] = {"class_type": "StubOutput", "inputs": {"value": ["sw", 0]}}
    result = validate(prompt)
    assert result.ok
    assert result.prompt["c"]["inputs"]["value"] == 7 and prompt["c"]["inputs"]["value"] == "7"
    assert result.prompt["sw"]["inputs"]["choose"] is False


def test_one_valid_output_is_enough(validate):
    prompt = good()
    prompt["bad"] = {"class_type": "StubOutput", "inputs": {}}
    result = validate(prompt)
    assert result.ok and result.outputs == ["o"] and "bad" in result.node_errors


def test_deep_chains_validate_without_recursion_limits(validate):
    prompt = {"0": {"class_type": "StubConst", "inputs": {"value": 1}}}
    for i in range(1, 3000):
        prompt[str(i)] = {"class_type": "StubAdd", "inputs": {"a": [str(i - 1), 0]}}
    prompt["o"] = {"class_type": "StubOutput", "inputs": {"value": ["2999", 0]}}
    assert validate(prompt).ok


# -- malformed shapes: a clear error naming the node, never an exception ---------------------------

@pytest.mark.parametrize("node, words", [
    ([1, 2], "not an object"),
    ("StubConst", "not an object"),
    ({"class_type": ["StubConst"], "inputs": {}}, "class_type is not a string"),
    ({"class_type": {"a": 1}, "inputs": {}}, "class_type is not a string"),
    ({"class_type": None, "inputs": {}}, "class_type is not a string"),
    ({"class_type": "StubConst", "inputs": [1, 2]}, "inputs are not an object"),
    ({"class_type": "StubConst", "inputs": "value=1"}, "inputs are not an object"),
])
def test_a_malformed_node_is_an_invalid_prompt_naming_it(validate, node, words):
    prompt = good()
    prompt["bad"] = node
    result = validate(prompt)
    assert not result.ok and result.error.type == "invalid_prompt"
    assert words in result.error.message and "#bad" in result.error.details


@pytest.mark.parametrize("link", [["nope", 0], ["c", 1], ["c", -1], ["c", 0.5], ["c", 1e300],
                                  ["c", float("inf")], ["c", True], [0, 0], ["c"], ["c", 0, 0]])
def test_a_bad_link_on_an_undeclared_input_is_reported(validate, link):
    prompt = good()
    prompt["o"]["inputs"]["extra"] = link  # not declared by StubOutput: passed on as **kwargs
    err = only_error(validate(prompt), "o")
    assert err["type"] == "bad_linked_input" and err["extra_info"]["input_name"] == "extra"


@pytest.mark.parametrize("slot", [1, -1, 7, 0.5, float("nan")])
def test_a_link_to_a_missing_output_slot_is_reported(validate, slot):
    prompt = good()
    prompt["add"]["inputs"]["a"] = ["c", slot]
    err = only_error(validate(prompt), "add")
    assert err["type"] == "bad_linked_input"


def test_a_whole_float_slot_is_a_link(validate):
    prompt = good()
    prompt["add"]["inputs"]["a"] = ["c", 0.0]
    assert validate(prompt).ok
