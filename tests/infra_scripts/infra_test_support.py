"""Shared by the infra_scripts tests: paths, the doc's substitution names, and the moto variant of the template.

Moto's CloudFormation (moto 5.2.5) cannot create every resource type this stack uses. The deploy test feeds
moto a copy of the template with those resources stripped (MOTO_UNSUPPORTED_TYPES, asserted to be exactly
what moto lacks), references to them replaced by placeholder strings, and two properties rewritten that
moto reads differently from CloudFormation (MOTO_PROPERTY_REWRITES). Everything else - packaging,
uploads, change sets, execution, outputs - runs for real against the moto server.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra_scripts" / "template.yaml"
GRANTS = REPO / "infra_scripts" / "redshift_grants.sql"
RUNTIME_DOC = REPO / "docs" / "aws-runtime.md"
DEFINITION = REPO / "aws_handlers" / "statemachine" / "ingest.asl.json"

# Resource types of template.yaml that moto 5.2.5's CloudFormation does not implement (it would skip them
# with a warning and then fail on the first reference): stripped from the copy fed to moto.
MOTO_UNSUPPORTED_TYPES = frozenset({
    "AWS::CloudWatch::Alarm",
    "AWS::Glue::Job",
    "AWS::Glue::SecurityConfiguration",
    "AWS::S3::BucketPolicy",
    "AWS::SNS::Subscription",
    "AWS::SQS::QueuePolicy",
})

# Properties moto reads differently from CloudFormation, rewritten in the moto copy:
#   StateMachine.DefinitionS3Location  moto only reads DefinitionString (and ignores DefinitionSubstitutions):
#                                      the copy inlines the definition file the deploy uploads;
#   LandingCsvRule.EventPattern        a JSON *string* (built with Fn::Sub/Fn::Join from DatasetPrefixes) is
#                                      valid for CloudFormation, but moto json-encodes it a second time: the
#                                      copy holds the same pattern, evaluated, as an object.
MOTO_PROPERTY_REWRITES = ("StateMachine.DefinitionS3Location", "LandingCsvRule.EventPattern")


def doc_substitution_names() -> list[str]:
    """The ${...} names listed under "State machine definition substitutions" in docs/aws-runtime.md."""
    text = RUNTIME_DOC.read_text(encoding="utf-8")
    section = text.split("## State machine definition substitutions", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`\$\{([A-Za-z0-9_]+)\}`", section)


def stub_definition(names: list[str]) -> str:
    """A minimal valid ASL using every substitution name (for when the real definition is not there yet)."""
    return json.dumps({
        "Comment": "stub used by tests/infra_scripts while ingest.asl.json does not exist",
        "StartAt": "Done",
        "States": {"Done": {"Type": "Pass", "Result": {name: "${%s}" % name for name in names}, "End": True}},
    }, indent=2)


def moto_supported_types() -> set[str]:
    from moto.cloudformation.parsing import NULL_MODELS, get_model_map

    return set(get_model_map()) | set(NULL_MODELS)


class _Unresolvable(Exception):
    pass


def _evaluate(node: Any, parameters: dict[str, Any], template: dict[str, Any], local: dict[str, Any]) -> Any:
    """Just enough of CloudFormation's intrinsics to evaluate the EventPattern: Fn::Sub, Fn::Join, Ref.
    A reference to a resource becomes the sentinel "@@Ref:<name>@@"."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return [_evaluate(item, parameters, template, local) for item in node]
    if isinstance(node, dict) and len(node) == 1:
        (function, argument), = node.items()
        if function == "Ref":
            if argument in local:
                return local[argument]
            if argument in parameters:
                value = parameters[argument]
                kind = template["Parameters"][argument]["Type"]
                return [v.strip() for v in value.split(",")] if kind == "CommaDelimitedList" else value
            if argument in template["Resources"]:
                return f"@@Ref:{argument}@@"
            raise _Unresolvable(argument)
        if function == "Fn::Join":
            separator, items = argument
            items = _evaluate(items, parameters, template, local)
            flat = []
            for item in items:
                flat.extend(item if isinstance(item, list) else [item])
            return separator.join(flat)
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            values = {k: _evaluate(v, parameters, template, local) for k, v in variables.items()}

            def replace(match: re.Match) -> str:
                name = match.group(1)
                if name in values:
                    return values[name]
                return _evaluate({"Ref": name}, parameters, template, local)

            return re.sub(r"\$\{([A-Za-z0-9_:.]+)\}", replace, text)
    raise _Unresolvable(json.dumps(node)[:80])


def _restore_refs(node: Any) -> Any:
    if isinstance(node, str):
        match = re.fullmatch(r"@@Ref:([A-Za-z0-9]+)@@", node)
        return {"Ref": match.group(1)} if match else node
    if isinstance(node, list):
        return [_restore_refs(item) for item in node]
    if isinstance(node, dict):
        return {k: _restore_refs(v) for k, v in node.items()}
    return node


def evaluate_event_pattern(template: dict[str, Any], parameters: dict[str, str]) -> Any:
    """The landing rule's EventPattern as an object; resource references stay {"Ref": ...}."""
    defaults = {k: str(v.get("Default")) for k, v in template["Parameters"].items() if "Default" in v}
    pattern = template["Resources"]["LandingCsvRule"]["Properties"]["EventPattern"]
    text = _evaluate(pattern, {**defaults, **parameters}, template, {})
    return _restore_refs(json.loads(text))


def _replace_stripped(node: Any, stripped: set[str]) -> Any:
    if isinstance(node, list):
        return [_replace_stripped(item, stripped) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"} and node["Ref"] in stripped:
        return f"moto-stripped-{node['Ref']}"
    if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"][0] in stripped:
        return f"moto-stripped-{'.'.join(node['Fn::GetAtt'])}"
    if set(node) == {"Fn::Sub"}:
        argument = node["Fn::Sub"]
        text, variables = (argument, None) if isinstance(argument, str) else argument
        text = re.sub(r"\$\{([A-Za-z0-9]+)(\.[A-Za-z0-9.]+)?\}",
                      lambda m: f"moto-stripped-{m.group(1)}{m.group(2) or ''}" if m.group(1) in stripped else m.group(0),
                      text)
        return {"Fn::Sub": text if variables is None else [text, _replace_stripped(variables, stripped)]}
    return {k: _replace_stripped(v, stripped) for k, v in node.items()}


def moto_variant(template: dict[str, Any], definition_text: str, parameters: dict[str, str]) -> tuple[dict[str, Any], set[str]]:
    """(the template moto can deploy, the resource types stripped from it)."""
    variant = copy.deepcopy(template)
    resources = variant["Resources"]
    unsupported = {name for name, r in resources.items() if r["Type"] not in moto_supported_types()}
    stripped_types = {resources[name]["Type"] for name in unsupported}
    pattern = evaluate_event_pattern(template, parameters)
    for name in unsupported:
        del resources[name]
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if depends:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in unsupported]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
    variant["Resources"] = _replace_stripped(resources, unsupported)
    variant["Outputs"] = _replace_stripped(variant.get("Outputs", {}), unsupported)
    machine = variant["Resources"]["StateMachine"]["Properties"]
    del machine["DefinitionS3Location"]
    machine["DefinitionString"] = definition_text
    variant["Resources"]["LandingCsvRule"]["Properties"]["EventPattern"] = pattern
    return variant, stripped_types
