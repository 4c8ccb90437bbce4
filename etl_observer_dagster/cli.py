"""etl-observer: run a batch through the Dagster job in-process, verify evidence, draft contracts.

JSON goes to stdout (one document per command), progress and logs to stderr.
Exit codes: 0 success, 1 the batch (or the evidence) failed on its data, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _contract_for(dataset: str, contract_path: str | None, settings):
    from aws_handlers.core.contract import ContractError, discover_contracts, load_contract

    try:
        if contract_path:
            contract = load_contract(contract_path)
            if contract.dataset != dataset:
                raise UsageError(f"{contract_path} is the contract of dataset {contract.dataset!r}, not {dataset!r}")
            return contract, False
        contracts = discover_contracts(settings.contracts_dir)
    except ContractError as exc:
        raise UsageError(str(exc)) from exc
    if dataset not in contracts:
        raise UsageError(f"no contract for dataset {dataset!r} (known: {sorted(contracts)}); draft one with "
                         f"`etl-observer contract infer FILE --dataset {dataset}`")
    return contracts[dataset], True


def cmd_run(args: argparse.Namespace) -> int:
    from aws_handlers.core.pipeline import BatchInput, BatchInputError, batch_summary, generate_batch_id
    from aws_handlers.core.evidence import report_keys

    from .settings import current_settings, prepare_home

    settings = prepare_home(current_settings())
    if args.input:
        if args.files or args.dataset or args.batch_id:
            raise UsageError("--input takes the whole batch document; do not combine it with FILE, --dataset or --batch-id")
        try:
            doc = json.loads(Path(args.input).read_text(encoding="utf-8"))
            batch = BatchInput.from_document(doc)
        except (OSError, ValueError, BatchInputError) as exc:
            raise UsageError(f"{args.input}: {exc}") from exc
    else:
        if not args.dataset or not args.files:
            raise UsageError("give --dataset NAME and at least one FILE (or --input batch.json)")
        files = []
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                raise UsageError(f"{name}: no such file")
            files.append(str(path.resolve()))
        try:
            batch = BatchInput.from_document({"batch_id": args.batch_id or generate_batch_id("cli"),
                                              "dataset": args.dataset, "files": files})
        except BatchInputError as exc:
            raise UsageError(str(exc)) from exc
    contract, known = _contract_for(batch.dataset, args.contract, settings)

    from dagster import DagsterInstance

    from aws_handlers.core.contract import discover_contracts

    from .assets import batch_op_name, job_name, partitions_def_name
    from .definitions import build_definitions
    from .resources import LocalPipelineResource

    # A --contract for a dataset the code location does not know yet must also define its assets.
    registered = known or batch.dataset in discover_contracts(settings.contracts_dir)
    defs = build_definitions(settings, extra_contracts=[] if registered else [contract])
    instance = DagsterInstance.get()
    partitions = partitions_def_name(batch.dataset)
    if not instance.has_dynamic_partition(partitions, batch.batch_id):
        instance.add_dynamic_partitions(partitions, [batch.batch_id])
    op_config: dict[str, Any] = {"files": list(batch.files)}
    if args.contract:
        op_config["contract_path"] = str(Path(args.contract).resolve())
    if args.encoding:
        op_config["declared_encoding"] = args.encoding
    print(f"[etl-observer] running batch {batch.batch_id} of {batch.dataset} ({len(batch.files)} files)", file=sys.stderr)
    result = defs.resolve_job_def(job_name(batch.dataset)).execute_in_process(
        run_config={"ops": {batch_op_name(batch.dataset): {"config": op_config}},
                    "loggers": {"console": {"config": {"log_level": args.log_level}}}},
        instance=instance, partition_key=batch.batch_id, raise_on_error=False,
        tags={"dataset": batch.dataset, "etl_observer/source": "cli"})
    evidence = LocalPipelineResource(home=str(settings.home)).stores().evidence
    key = report_keys(batch.dataset, batch.batch_id)["json"]
    report = json.loads(evidence.get_bytes(key)) if evidence.exists(key) else None
    if report is None or report.get("runtime", {}).get("run_id") != result.run_id:
        failure = next((e for e in result.all_events if e.is_failure), None)
        _print_json({"status": "FAILED", "batch_id": batch.batch_id, "dataset": batch.dataset, "run_id": result.run_id,
                     "errors": [{"message": failure.message if failure else "the run failed before writing evidence"}]})
        return EXIT_DATA
    location = {"json": evidence.uri(key), "html": evidence.uri(report_keys(batch.dataset, batch.batch_id)["html"])}
    summary = batch_summary(report, location)
    summary["run_id"] = result.run_id
    _print_json(summary)
    return EXIT_OK if summary["status"] == "SUCCEEDED" else EXIT_DATA


def cmd_verify(args: argparse.Namespace) -> int:
    from aws_handlers.core.evidence import datasets_in_store, verify_dataset
    from aws_handlers.storage import LocalStore

    from .settings import current_settings

    settings = current_settings()
    store = LocalStore(settings.evidence_dir)
    datasets = [args.dataset] if args.dataset else datasets_in_store(store)
    if not datasets:
        raise UsageError(f"no evidence under {settings.evidence_dir}")
    results = [verify_dataset(store, d, check_files=not args.no_files) for d in datasets]
    problems = [p for r in results for p in r["problems"]]
    _print_json({"ok": not problems, "first_mismatch": problems[0] if problems else None, "datasets": results})
    for problem in problems[:1]:
        print(f"verify: FAILED: {problem}", file=sys.stderr)
    return EXIT_OK if not problems else EXIT_DATA


def cmd_contract_infer(args: argparse.Namespace) -> int:
    from aws_handlers.core.contract import DATASET_PATTERN
    from aws_handlers.core.errors import DataError
    from aws_handlers.core.infer import infer_contract, save_contract

    from .settings import current_settings, prepare_home

    if not DATASET_PATTERN.match(args.dataset):
        raise UsageError(f"--dataset must match {DATASET_PATTERN.pattern}")
    if not Path(args.file).is_file():
        raise UsageError(f"{args.file}: no such file")
    settings = prepare_home(current_settings())
    target = settings.contracts_dir / f"{args.dataset}.yaml"
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; pass --force to replace it")
    try:
        result = infer_contract(args.file, args.dataset, header=args.header, encoding=args.encoding)
    except DataError as exc:
        _print_json({"ok": False, "errors": [e.to_dict() for e in exc.errors]})
        return EXIT_DATA
    except ValueError as exc:  # an unknown --encoding, or a contract that would not validate
        raise UsageError(str(exc)) from exc
    path = save_contract(result.contract, settings.contracts_dir)
    for note in result.notes:
        print(f"[etl-observer] {note}", file=sys.stderr)
    print(f"[etl-observer] contract written to {path}", file=sys.stderr)
    _print_json({"ok": True, "contract_path": str(path), "dataset": args.dataset, "rows": result.rows,
                 "encoding": result.encoding, "header_detected": result.header_detected, "header_used": result.header_used,
                 "notes": result.notes, "columns": [c.to_dict() for c in result.contract.columns],
                 "primary_key": list(result.contract.primary_key)})
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from .settings import current_settings, prepare_home

    settings = prepare_home(current_settings())
    repo = Path(__file__).resolve().parent.parent
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(repo / "workspace.yaml"), "--port", str(args.port), "--host", args.host]
    if settings.env == "local":
        print(f"[etl-observer] home {settings.home}; drop CSVs into {settings.landing_dir}/<dataset>/ "
              f"(datasets: see {settings.contracts_dir} and the bundled contracts)", file=sys.stderr)
    else:
        print(f"[etl-observer] aws mode: observing the landing bucket and the state machine; home {settings.home}",
              file=sys.stderr)
    os.chdir(repo)
    os.execv(command[0], command)
    return EXIT_OK  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etl-observer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one batch through the Dagster job in-process; JSON summary on stdout")
    run.add_argument("files", nargs="*", metavar="FILE")
    run.add_argument("--dataset")
    run.add_argument("--batch-id", help="letters, digits, '_' and '-' (default: generated)")
    run.add_argument("--contract", help="contract YAML to use instead of the dataset's registered one")
    run.add_argument("--input", help="a Step Functions input document: {batch_id, dataset, files}")
    run.add_argument("--encoding", help="declare the files' encoding (utf-8, utf-8-sig, cp932, shift_jis)")
    run.add_argument("--log-level", default="CRITICAL",
                     help="Dagster log level on stderr (default CRITICAL: data errors are in the JSON summary; "
                          "use INFO or DEBUG to see every step)")
    run.set_defaults(func=cmd_run)

    verify = sub.add_parser("verify", help="recompute the evidence hash chain and every recorded file hash")
    verify.add_argument("--dataset")
    verify.add_argument("--no-files", action="store_true", help="check the chain only, not the files it names")
    verify.set_defaults(func=cmd_verify)

    contract = sub.add_parser("contract", help="dataset contracts")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True)
    infer = contract_sub.add_parser("infer", help="draft a contract from a whole CSV file")
    infer.add_argument("file", metavar="FILE")
    infer.add_argument("--dataset", required=True)
    infer.add_argument("--header", dest="header", action="store_true", default=None, help="the first line is a header")
    infer.add_argument("--no-header", dest="header", action="store_false", help="the first line is data")
    infer.add_argument("--encoding")
    infer.add_argument("--force", action="store_true", help="replace an existing contract of that dataset")
    infer.set_defaults(func=cmd_contract_infer)

    dev = sub.add_parser("dev", help="dagster dev on this project with the landing sensor running")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--host", default="127.0.0.1")
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"etl-observer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
