"""Glue job: one CSV from the landing bucket -> snappy Parquet + manifest in the staging bucket.

Thin on purpose: arguments in, aws_handlers.core.pipeline.convert_file out, so Glue runs exactly the
converter that local mode runs. Job arguments (Glue passes them as --name value):
  --batch_id --dataset --source_key --landing_bucket --staging_bucket [--contract_key] [--encoding]
The manifest's S3 key is printed as JSON on stdout (what Step Functions' ResultSelector keeps).
It also runs as a plain Python process against any S3-compatible endpoint (AWS_ENDPOINT_URL_S3),
which is how the tests run it.
"""
from __future__ import annotations

import json
import sys

REQUIRED = ["batch_id", "dataset", "source_key", "landing_bucket", "staging_bucket"]
OPTIONAL = ["contract_key", "encoding"]


def resolve_arguments(argv: list[str]) -> dict[str, str]:
    try:  # inside Glue
        from awsglue.utils import getResolvedOptions  # type: ignore[import-not-found]

        present = [name for name in OPTIONAL if f"--{name}" in argv]
        return getResolvedOptions(argv, REQUIRED + present)
    except ImportError:  # a plain Python process: the same argument convention
        import argparse

        parser = argparse.ArgumentParser(prog="csv_to_parquet")
        for name in REQUIRED:
            parser.add_argument(f"--{name}", required=True)
        for name in OPTIONAL:
            parser.add_argument(f"--{name}", default=None)
        args, _unknown = parser.parse_known_args(argv[1:])  # Glue adds its own --JOB_ID etc.
        return {k: v for k, v in vars(args).items() if v is not None}


def run(args: dict[str, str], s3_client=None) -> dict:
    import boto3
    import tempfile
    from pathlib import Path

    from aws_handlers.core.contract import BUNDLED_CONTRACTS_DIR, load_contract
    from aws_handlers.core.pipeline import BatchInput, Layout, convert_file, resolve_input
    from aws_handlers.storage import S3Store

    client = s3_client or boto3.client("s3")
    landing, staging = S3Store(args["landing_bucket"], client=client), S3Store(args["staging_bucket"], client=client)
    if args.get("contract_key"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "contract.yaml"
            path.write_bytes(staging.get_bytes(args["contract_key"]))
            contract = load_contract(path)
    else:
        contract = load_contract(BUNDLED_CONTRACTS_DIR / f"{args['dataset']}.yaml")
    batch = BatchInput.from_document({"batch_id": args["batch_id"], "dataset": args["dataset"],
                                      "files": [args["source_key"]]})
    source = resolve_input(args["source_key"], landing)
    stem = Layout.output_stem(args["dataset"], args["source_key"])
    manifest = convert_file(contract, batch, source, staging, stem, declared_encoding=args.get("encoding"))
    return {"status": manifest["status"], "manifest_uri": manifest["manifest_uri"],
            "rows": (manifest["output"] or {}).get("rows"), "error_count": manifest["error_count"]}


def main(argv: list[str] | None = None) -> int:
    result = run(resolve_arguments(argv if argv is not None else sys.argv))
    print(json.dumps(result))
    # A data failure is recorded in the manifest (the evidence step reads it); the job still fails
    # so the state machine's Catch path sees it.
    return 0 if result["status"] == "converted" else 1


if __name__ == "__main__":
    sys.exit(main())
