"""The fake OpenAI server's files and Batch API: batches run lazily, lines answered by the live code."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.support.openai_content import page
from tests.support.openai_rules import (
    ApiError,
    LineFault,
    Payload,
    Plan,
    api_path_of,
    error_body,
    matches,
    new_id,
    take,
)

BATCH_ENDPOINTS = {"/v1/chat/completions": "/chat/completions", "/v1/embeddings": "/embeddings"}


FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data")


TERMINAL = ("completed", "failed", "expired", "cancelled")


UNRUN = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class Batch:
    info: dict[str, Any]  # the public Batch object
    api_path: str
    lines: list[dict[str, Any]]  # validated: custom_id, method, url, body
    errors: list[dict[str, Any]]  # validation errors: the batch fails
    started: float  # time.monotonic() at creation
    duration: float
    fate: tuple[str, Any] | None  # ("expire", lines run first) or ("fail", (code, message))
    results: list[dict[str, Any]] = field(default_factory=list)  # output lines, in input order


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_batch_file(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The valid request lines of a batch input file, and the errors that make the batch fail."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [batch_error("invalid_file_format", "The input file is not UTF-8 text.")]
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict):
            errors.append(batch_error("invalid_json_line", f"Line {number} is not a JSON object.", number))
            continue
        missing = [key for key in ("custom_id", "method", "url", "body") if key not in line]
        problem = None
        if missing:
            problem = (
                "missing_required_parameter",
                f"Missing required parameter: '{missing[0]}'.",
                missing[0],
            )
        elif not isinstance(line["custom_id"], str) or not line["custom_id"]:
            problem = ("invalid_custom_id", "'custom_id' must be a non-empty string.", "custom_id")
        elif line["custom_id"] in seen:
            problem = ("duplicate_custom_id", f"Duplicate custom_id {line['custom_id']!r}.", "custom_id")
        elif line["method"] != "POST":
            problem = ("invalid_method", f"Invalid method {line['method']!r}: only 'POST'.", "method")
        elif line["url"] != endpoint:
            problem = (
                "mismatched_endpoint",
                f"The url {line['url']!r} is not the batch's {endpoint}.",
                "url",
            )
        elif not isinstance(line["body"], dict):
            problem = ("invalid_body", "'body' must be a JSON object.", "body")
        if problem is not None:
            errors.append(batch_error(problem[0], problem[1], number, problem[2]))
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    models = sorted({str(line["body"].get("model")) for line in lines})
    if len(models) > 1:
        errors.append(
            batch_error("mismatched_model", f"A batch must use one model, not {models}.", None, "body.model")
        )
    if not lines and not errors:
        errors.append(batch_error("empty_file", "The input file has no requests."))
    return lines, errors


def count(batch: Batch) -> None:
    """Update a batch's request counts and token usage from the lines run so far."""
    usage = {"input": 0, "output": 0}
    completed = 0
    for result in batch.results:
        response = result["response"]
        if response["status_code"] == 200:
            completed += 1
            tokens = response["body"].get("usage") or {}
            usage["input"] += int(tokens.get("prompt_tokens", 0))
            usage["output"] += int(tokens.get("completion_tokens", 0))
    batch.info["request_counts"] = {
        "total": len(batch.lines),
        "completed": completed,
        "failed": len(batch.results) - completed,
    }
    batch.info["usage"] = {
        "input_tokens": usage["input"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["output"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["input"] + usage["output"],
    }


def shuffled(items: list[dict[str, Any]], seed: str) -> list[dict[str, Any]]:
    """A reproducible shuffle that never keeps the order of two or more items."""
    result = list(items)
    random.Random(seed).shuffle(result)
    if len(result) > 1 and all(a is b for a, b in zip(result, items, strict=True)):
        result = result[1:] + result[:1]
    return result


class BatchAPI:
    """The files and batches endpoints of `OpenAIServer` (its `_store_lock` guards them)."""

    _store_lock: threading.Lock
    _files: dict[str, StoredFile]
    _batches: dict[str, Batch]
    batch_processing_seconds: float
    batch_output_shuffled: bool
    _line_faults: list[LineFault]
    _batch_fates: list[tuple[str, Any]]
    _lock: threading.Lock

    def _files_api(
        self, method: str, path: str, body: dict[str, Any], upload: tuple[str, bytes] | None
    ) -> Payload:
        parts = api_path_of(path).split("/")[2:]
        with self._store_lock:
            if not parts and method == "POST":
                purpose = body.get("purpose")
                if upload is None:
                    raise ApiError(400, "Missing required parameter: 'file'.", param="file")
                if purpose not in FILE_PURPOSES:
                    raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
                return self._store_file(upload[0], str(purpose), upload[1]).info()
            if not parts:
                purpose = parse_qs(path.partition("?")[2]).get("purpose", [None])[0]
                files = [f.info() for f in reversed(self._files.values()) if purpose in (None, f.purpose)]
                return page(files)
            stored = self._files.get(parts[0])
            if stored is None:
                raise ApiError(404, f"No such File object: {parts[0]}", param="id", code=None)
            if method == "DELETE":
                del self._files[stored.id]
                return {"id": stored.id, "object": "file", "deleted": True}
            return stored.data if parts[1:] == ["content"] else stored.info()

    def _store_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        # Caller holds self._store_lock.
        stored = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self._files[stored.id] = stored
        return stored

    def _batches_api(self, method: str, api_path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = api_path.split("/")[2:]
        with self._store_lock:
            if not parts and method == "POST":
                return copy.deepcopy(self._create_batch(body).info)
            if not parts:
                for batch in self._batches.values():
                    self._advance(batch)
                return page([copy.deepcopy(b.info) for b in reversed(self._batches.values())])
            found = self._batches.get(parts[0])
            if found is None:
                raise ApiError(404, f"No such Batch object: {parts[0]}", param="id", code=None)
            self._advance(found)
            if parts[1:] == ["cancel"]:
                status = found.info["status"]
                if status in TERMINAL:
                    raise ApiError(409, f"Cannot cancel a batch with status '{status}'.", code=None)
                found.info.update(status="cancelling", cancelling_at=int(time.time()))
            return copy.deepcopy(found.info)

    def _create_batch(self, body: dict[str, Any]) -> Batch:
        # Caller holds self._store_lock.
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in BATCH_ENDPOINTS:
            supported = ", ".join(BATCH_ENDPOINTS)
            raise ApiError(
                400, f"Invalid 'endpoint': {endpoint!r} (supported: {supported}).", param="endpoint"
            )
        if body.get("completion_window") != "24h":
            raise ApiError(
                400, "Invalid 'completion_window': only '24h' is supported.", param="completion_window"
            )
        file_id = body.get("input_file_id")
        stored = self._files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise ApiError(400, f"Invalid 'input_file_id': no file {file_id!r}.", param="input_file_id")
        if stored.purpose != "batch":
            raise ApiError(
                400, f"File {file_id} has purpose {stored.purpose!r}, not 'batch'.", param="input_file_id"
            )
        lines, errors = parse_batch_file(stored.data, endpoint)
        with self._lock:
            fate = self._batch_fates.pop(0) if self._batch_fates else None
        models = [line["body"].get("model") for line in lines]
        now = int(time.time())
        info: dict[str, Any] = {
            "id": new_id("batch_", 32),
            "object": "batch",
            "endpoint": endpoint,
            "model": models[0] if models and isinstance(models[0], str) else None,
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0 if errors else len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "usage": None,
        }
        batch = Batch(
            info,
            BATCH_ENDPOINTS[endpoint],
            lines,
            errors,
            time.monotonic(),
            max(0.0, float(self.batch_processing_seconds)),
            fate,
        )
        self._batches[info["id"]] = batch
        return batch

    def _advance(self, batch: Batch) -> None:
        """Bring a batch up to date: run the lines due by now, finish it when its time is up."""
        # Caller holds self._store_lock.
        info = batch.info
        if info["status"] in TERMINAL:
            return
        now = int(time.time())
        errors = batch.errors
        if not errors and batch.fate is not None and batch.fate[0] == "fail":
            errors = [batch_error(*batch.fate[1])]
        if errors:
            info.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            info["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
            return
        if info["status"] == "validating":
            info.update(status="in_progress", in_progress_at=now)
        if info["status"] == "cancelling":
            self._finalize(batch, "cancelled", "batch_cancelled")
            return
        total = len(batch.lines)
        elapsed = time.monotonic() - batch.started
        done = elapsed >= batch.duration
        due = total if done else int(total * elapsed / batch.duration)
        expiring = batch.fate is not None and batch.fate[0] == "expire"
        if expiring and batch.fate is not None:
            runs = batch.fate[1]
            due = min(due, total // 2 if runs is None else max(0, int(runs)))
        while len(batch.results) < due:
            batch.results.append(self._run_line(batch, batch.lines[len(batch.results)]))
        count(batch)
        if done:
            self._finalize(batch, "expired" if expiring else "completed", "batch_expired")

    def _run_line(self, batch: Batch, line: dict[str, Any]) -> dict[str, Any]:
        """One output-file line: the line's request answered as the live endpoint would."""
        body: dict[str, Any] = line["body"]
        serialised = json.dumps(body, ensure_ascii=False)
        plan = Plan()
        with self._lock:
            line_fault = take(self._line_faults, lambda f: matches(f.substring, serialised, body))
            if line_fault is None:
                self._apply_rules(plan, batch.api_path, body, serialised)
        if line_fault is not None:
            status = line_fault.status
            payload: Payload = error_body(status, f"Injected batch line failure (HTTP {status}).")
        else:
            status, payload = self._execute("POST", batch.api_path, body, plan)
        return {
            "id": new_id("batch_req_", 32),
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": new_id("req_", 32), "body": payload},
            "error": None,
        }

    def _finalize(self, batch: Batch, status: str, unrun_code: str) -> None:
        """Write the output and error files (when non-empty) and end the batch with `status`."""
        # Caller holds self._store_lock.
        info = batch.info
        ok = [r for r in batch.results if r["response"]["status_code"] == 200]
        failed = [r for r in batch.results if r["response"]["status_code"] != 200]
        failed += [
            {
                "id": new_id("batch_req_", 32),
                "custom_id": line["custom_id"],
                "response": None,
                "error": {"code": unrun_code, "message": UNRUN[unrun_code]},
            }
            for line in batch.lines[len(batch.results) :]
        ]
        now = int(time.time())
        info["finalizing_at"] = now
        for key, results, suffix in (("output_file_id", ok, "output"), ("error_file_id", failed, "error")):
            if results:
                if self.batch_output_shuffled:
                    results = shuffled(results, f"{info['id']}-{suffix}")
                data = "".join(json.dumps(r) + "\n" for r in results).encode()
                info[key] = self._store_file(f"{info['id']}_{suffix}.jsonl", "batch_output", data).id
        count(batch)
        info["status"] = status
        info[f"{status}_at"] = now
