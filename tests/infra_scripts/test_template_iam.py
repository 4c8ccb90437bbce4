"""Static IAM review of template.yaml: least privilege, stated where it cannot be."""
from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest

from infra_test_support import TEMPLATE
from infra_scripts.deploy import load_template

STAR_COMMENT = re.compile(r'^\s*# Resource "\*"[^A-Za-z]*\S.{20,}$')


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE)


def policy_documents(template: dict) -> Iterator[tuple[str, str, dict]]:
    """(resource, which document, document) for every policy document in the template."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::IAM::Role":
            yield name, "trust", props["AssumeRolePolicyDocument"]
            for policy in props.get("Policies", []):
                yield name, policy["PolicyName"], policy["PolicyDocument"]
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy",
                      "AWS::SNS::TopicPolicy"):
            yield name, kind, props["PolicyDocument"]
        elif kind == "AWS::KMS::Key":
            yield name, "key policy", props["KeyPolicy"]


def statements(template: dict) -> Iterator[tuple[str, str, dict]]:
    for name, which, document in policy_documents(template):
        for statement in document["Statement"]:
            yield name, which, statement


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def role_statements(template: dict, role: str) -> list[dict]:
    return [s for p in template["Resources"][role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_no_allow_statement_grants_every_action_or_every_action_of_a_service(template):
    for name, which, statement in statements(template):
        actions = as_list(statement.get("Action", []))
        assert "*" not in actions, (name, which)
        assert "NotAction" not in statement, (name, which)
        if statement["Effect"] == "Allow":
            broad = [a for a in actions if isinstance(a, str) and re.fullmatch(r"[a-z0-9-]+:\*", a)]
            assert not broad, (name, which, broad)
        else:  # a Deny may be broad (the HTTPS-only bucket statements), but only as a guard
            assert statement.get("Condition"), (name, which)


def test_every_resource_star_is_justified_on_the_line_above(template):
    star_statements = [(n, w, s.get("Sid")) for n, w, s in statements(template)
                       if "*" in as_list(s.get("Resource", []))]
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    star_lines = [i for i, line in enumerate(lines) if re.fullmatch(r'\s*Resource: "\*"', line)]
    assert len(star_lines) == len(star_statements), "write Resource \"*\" as its own block-style line"
    for i in star_lines:
        assert STAR_COMMENT.match(lines[i - 1]), f"line {i + 1}: no '# Resource \"*\": <why>' comment above"
    allowed_roles = {"StartBatchRole", "ValidateBatchRole", "PrepareLoadRole", "WriteEvidenceRole", "GlueJobRole",
                     "StateMachineRole", "EncryptionKey"}
    assert {n for n, _w, _s in star_statements} <= allowed_roles


def test_resource_star_only_for_actions_without_resource_level_permissions(template):
    allowed = re.compile(r"^(xray:.*|logs:(Create|Get|Update|Delete|List)LogDeliver(y|ies)|logs:PutResourcePolicy|"
                         r"logs:DescribeResourcePolicies|logs:DescribeLogGroups|cloudwatch:PutMetricData|"
                         r"redshift-data:(DescribeStatement|GetStatementResult|CancelStatement)|kms:.*)$")
    for name, which, statement in statements(template):
        if statement["Effect"] == "Allow" and "*" in as_list(statement.get("Resource", [])):
            for action in as_list(statement["Action"]):
                assert allowed.match(action), (name, which, action)
            if any(a.startswith("redshift-data:") for a in as_list(statement["Action"])):
                assert statement["Condition"] == {
                    "StringEquals": {"redshift-data:statement-owner-iam-userid": "${aws:userid}"}}
            if any(a == "cloudwatch:PutMetricData" for a in as_list(statement["Action"])):
                assert "cloudwatch:namespace" in json.dumps(statement["Condition"])
            if any(a.startswith("kms:") for a in as_list(statement["Action"])):
                assert which == "key policy", "IAM policies name the key ARN"


def test_copy_role_is_trusted_by_redshift_and_reads_only_staging(template):
    role = template["Resources"]["RedshiftCopyRole"]["Properties"]
    trust, = role["AssumeRolePolicyDocument"]["Statement"]
    assert sorted(trust["Principal"]["Service"]) == ["redshift-serverless.amazonaws.com", "redshift.amazonaws.com"]
    assert trust["Action"] == "sts:AssumeRole"
    body = json.dumps(role["Policies"])
    assert "StagingBucket" in body and "LandingBucket" not in body and "ArtifactBucket" not in body
    actions = {a for s in role_statements(template, "RedshiftCopyRole") for a in as_list(s["Action"])}
    assert actions == {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "kms:Decrypt"}


def test_service_actions_are_scoped_to_this_stacks_resources(template):
    machine = role_statements(template, "StateMachineRole")
    by_action = {a: s for s in machine for a in as_list(s["Action"])}
    glue_arn = by_action["glue:StartJobRun"]["Resource"]["Fn::Sub"]
    assert glue_arn.endswith(":job/${GlueJob}") and "${AWS::Partition}" in glue_arn
    invoked = json.dumps(by_action["lambda:InvokeFunction"]["Resource"])
    assert {"ValidateBatchFunction", "PrepareLoadFunction", "WriteEvidenceFunction"} <= set(
        re.findall(r"[A-Za-z]+Function", invoked)) and "StartBatchFunction" not in invoked
    workgroup = ":workgroup/${RedshiftWorkgroupId}"
    assert by_action["redshift-data:BatchExecuteStatement"]["Resource"]["Fn::Sub"].endswith(workgroup)
    assert by_action["redshift-serverless:GetCredentials"]["Resource"]["Fn::Sub"].endswith(workgroup)
    assert by_action["sns:Publish"]["Resource"] == {"Ref": "AlertTopic"}

    start = {a: s for s in role_statements(template, "StartBatchRole") for a in as_list(s["Action"])}
    assert start["states:StartExecution"]["Resource"] == {"Ref": "StateMachine"}
    assert "execution:${StateMachine.Name}:*" in start["states:DescribeExecution"]["Resource"]["Fn::Sub"]

    for role in ("ValidateBatchRole", "PrepareLoadRole", "WriteEvidenceRole", "GlueJobRole", "RedshiftCopyRole"):
        for statement in role_statements(template, role):
            if any(a.startswith("s3:") for a in as_list(statement["Action"])):
                body = json.dumps(statement["Resource"])
                assert re.search(r"(Landing|Staging)Bucket|\$\{ArtifactBucket\}/\$\{ArtifactPrefix\}/\*", body), (
                    role, statement.get("Sid"))
    # who writes where: only the Glue job and the two Lambdas that must write touch staging; nothing writes landing
    for name, _which, statement in statements(template):
        if statement["Effect"] == "Allow" and "s3:PutObject" in as_list(statement.get("Action", [])):
            assert "LandingBucket" not in json.dumps(statement["Resource"]) or name == "AccessLogBucketPolicy", name


def test_roles_have_no_managed_policies_and_trust_one_service(template):
    for name, role in template["Resources"].items():
        if role["Type"] != "AWS::IAM::Role":
            continue
        assert "ManagedPolicyArns" not in role["Properties"], name
        for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            assert set(statement["Principal"]) == {"Service"}, name


def test_key_policy_services_are_conditioned_or_publish_only(template):
    key_policy = template["Resources"]["EncryptionKey"]["Properties"]["KeyPolicy"]["Statement"]
    for statement in key_policy:
        principal = statement["Principal"]
        if "Service" in principal and "cloudwatch" not in json.dumps(principal):
            assert statement.get("Condition"), statement["Sid"]
        if "AWS" in principal:
            assert principal["AWS"]["Fn::Sub"] == "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"


def test_the_code_that_deletes_objects_may_delete_exactly_those(template):
    """moto does not enforce IAM, so the permissions the code needs are asserted here: the Glue job
    removes a stale Parquet of its batch; write_evidence retracts a history entry that lost the race."""
    def deletes(role: str) -> list:
        return [s["Resource"] for s in role_statements(template, role) if "s3:DeleteObject" in as_list(s["Action"])]

    assert deletes("GlueJobRole") == [{"Fn::Sub": "${StagingBucket.Arn}/*/batch_id=*"}]
    assert deletes("WriteEvidenceRole") == [{"Fn::Sub": "${StagingBucket.Arn}/evidence/*"}]
