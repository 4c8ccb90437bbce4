"""First state: the batch document is well formed, its dataset has a contract, its files exist."""
from __future__ import annotations

from typing import Any

from ..core.pipeline import BatchInput, BatchInputError
from ._runtime import contract_for, log, stores


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    batch = BatchInput.from_document({k: event.get(k) for k in ("batch_id", "dataset", "files")})
    contract_for(batch.dataset)
    landing = stores().landing
    missing = [key for key in batch.files if not landing.exists(key)]
    if missing:
        raise BatchInputError(f"files not in s3://{landing.bucket}: {missing[:10]}" + (" …" if len(missing) > 10 else ""))
    log("batch valid", batch_id=batch.batch_id, dataset=batch.dataset, files=len(batch.files))
    return batch.to_document()
