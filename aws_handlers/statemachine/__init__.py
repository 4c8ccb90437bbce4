"""The `ingest` state machine definition (ASL, JSONPath) and its DefinitionSubstitutions.

`ingest.asl.json` is valid JSON as it is: every `${Name}` sits inside a JSON string. Deployment
passes the names in SUBSTITUTIONS as DefinitionSubstitutions; `load_definition` does the same
substitution locally (tests, scripts).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

DEFINITION_PATH = Path(__file__).with_name("ingest.asl.json")

# docs/aws-runtime.md, "State machine definition substitutions".
SUBSTITUTIONS: tuple[str, ...] = (
    "GlueJobName",
    "LandingBucket",
    "StagingBucket",
    "ValidateBatchFunctionArn",
    "PrepareLoadFunctionArn",
    "WriteEvidenceFunctionArn",
    "RedshiftWorkgroup",
    "RedshiftDatabase",
    "AlertTopicArn",
)

PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def definition_template() -> str:
    """The definition with its `${Name}` placeholders."""
    return DEFINITION_PATH.read_text(encoding="utf-8")


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER_RE.findall(text))


def load_definition(substitutions: Mapping[str, str]) -> str:
    """The definition with every `${Name}` replaced, as a JSON string ready for CreateStateMachine.

    Exactly the names in SUBSTITUTIONS are required. Values are JSON-escaped, since every
    placeholder sits inside a JSON string.
    """
    missing = sorted(set(SUBSTITUTIONS) - set(substitutions))
    unknown = sorted(set(substitutions) - set(SUBSTITUTIONS))
    if missing or unknown:
        raise ValueError(f"substitutions: missing {missing}, unknown {unknown}")
    text = PLACEHOLDER_RE.sub(lambda m: json.dumps(str(substitutions[m.group(1)]))[1:-1], definition_template())
    json.loads(text)  # still valid JSON
    return text
