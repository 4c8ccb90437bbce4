"""Batch documents and staging names: what each runtime derives from a file key alone."""
from __future__ import annotations

import pytest

from aws_handlers.core.pipeline import BatchInput, BatchInputError, Layout


def test_staging_stem_comes_from_the_key_alone():
    assert Layout.output_stem("employees", "employees/a.csv") == "a"
    assert Layout.output_stem("employees", "employees/2026/12/a.csv") == "2026__12__a"
    assert Layout.output_stem("employees", "/home/me/exports/a.csv") == "a"
    assert Layout.output_stem("employees", "s3://other/x/a.csv") == "a"


def test_only_path_inputs_can_collide_and_then_get_a_hash():
    names = Layout.output_names("employees", ("employees/a.csv", "employees/sub/a.csv", "/x/b.csv", "/y/b.csv"))
    assert names["employees/a.csv"] == "a" and names["employees/sub/a.csv"] == "sub__a"
    assert names["/x/b.csv"].startswith("b-") and names["/y/b.csv"].startswith("b-")
    assert names["/x/b.csv"] != names["/y/b.csv"]


@pytest.mark.parametrize("doc,message", [
    ({"dataset": "e", "files": ["a"]}, "lacks ['batch_id']"),
    ({"batch_id": "a|b", "dataset": "e", "files": ["a"]}, "must be 1-128 letters"),
    ({"batch_id": "b", "dataset": "e", "files": []}, "non-empty list"),
    ({"batch_id": "b", "dataset": "e", "files": ["a", "a"]}, "same file twice"),
])
def test_batch_document_validation(doc, message):
    with pytest.raises(BatchInputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("|", r"\|")):
        BatchInput.from_document(doc)


def test_a_trailing_newline_is_not_a_valid_batch_id_or_dataset():
    from aws_handlers.core.contract import ContractError, contract_from_dict

    with pytest.raises(BatchInputError, match="must be 1-128 letters"):
        BatchInput.from_document({"batch_id": "b1\n", "dataset": "e", "files": ["a"]})
    with pytest.raises(ContractError, match="dataset must match"):
        contract_from_dict({"dataset": "employees\n", "columns": [{"name": "a"}]})


def test_yaml_booleans_and_nulls_are_refused_in_value_lists():
    from aws_handlers.core.contract import ContractError, contract_from_dict

    for key, values in (("null_markers", [None]), ("true_values", [True]), ("false_values", ["no", False])):
        with pytest.raises(ContractError, match=f"{key} must be a list of quoted strings"):
            contract_from_dict({"dataset": "t", key: values, "columns": [{"name": "a"}]})
