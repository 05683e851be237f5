"""The OpenAPI 3.1 document served at ``/openapi.json`` (written by hand, kept next to the
routes in ``agent.server.app``; ``tests/test_server.py`` checks that every route is described)."""

from __future__ import annotations

from typing import Any

from agent import __version__

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ref("Error"), "Missing or unknown API key"),
    "403": _json(_ref("Error"), "The key's role does not allow this"),
}
_BODY_ERRORS = {
    "400": _json(_ref("Error"), "Invalid request (the message names the field)"),
    "413": _json(_ref("Error"), "Request body too large"),
}

_TASK_REQUEST = {
    "type": "object", "required": ["type", "queue"], "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "description": "Task type, e.g. email:send"},
        "queue": {"type": "string", "description": "A configured queue or sub-queue (x -> x.default if that exists)"},
        "payload": {"description": "Any JSON value; stored JSON-encoded as the task payload"},
        "payload_base64": {"type": "string", "description": "Raw payload bytes, base64 (instead of payload)"},
        "task_id": {"type": "string", "description": "Task ID (default: a random UUID); 409 if it exists"},
        "max_retry": {"type": "integer", "minimum": 0},
        "timeout": {"type": "number", "minimum": 1, "description": "Seconds a run may take"},
        "deadline": {"type": "number", "description": "Unix time after which the task must not run"},
        "process_in": {"type": "number", "minimum": 0, "description": "Delay in seconds"},
        "process_at": {"type": "number", "description": "Unix time to run at"},
        "unique": {"type": "number", "minimum": 1,
                   "description": "Uniqueness lock TTL in seconds (same type + payload + queue); 409 while held"},
        "retention": {"type": "number", "minimum": 0,
                      "description": "Seconds to keep the finished task and its result (0: delete on success)"},
        "group": {"type": "string", "description": "asynq aggregation group"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 64,
                    "description": "asynq task headers (TaskMessage.headers, map<string, string>): "
                                   "non-empty names, string values, at most 16 KiB of names and "
                                   "values together"},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "RegisterRequest": {
        "type": "object", "required": ["queue"],
        "properties": {"queue": {"type": "string", "description": "Parent queue name"},
                       "hostname": {"type": "string"}, "os": {"type": "string"},
                       "version": {"type": "string"}}},
    "RegisterResponse": {
        "type": "object", "required": ["redis", "queue", "sub_queues", "deployment"],
        "properties": {
            "redis": {"type": "object", "properties": {
                "addr": {"type": "string"}, "password": {"type": "string"}, "db": {"type": "integer"},
                "use_tls": {"type": "boolean"}, "username": {"type": "string"}, "url": {"type": "string"}}},
            "queue": {"type": "object", "properties": {"name": {"type": "string"},
                                                       "priority": {"type": "integer"}}},
            "sub_queues": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "priority": {"type": "integer"}}}},
            "deployment": {"type": "object", "required": ["git_url", "startup_cmd"], "properties": {
                "git_url": {"type": "string"}, "branch": {"type": "string"}, "commit": {"type": "string"},
                "code_path": {"type": "string"}, "startup_cmd": {"type": "string"},
                "mode": {"enum": ["long_running", "one_shot"]}, "startup_timeout_secs": {"type": "integer"},
                "processes": {"type": "integer"}, "requirements": {"type": "string"},
                "redis_storage": {"type": "boolean"},
                "env_vars": {"type": "object", "additionalProperties": {"type": "string"}},
                "vaults": {"type": "array", "items": {"type": "string"}}}},
            "vaults": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Secrets for the task code's environment"},
            "git_token": {"type": "string"}}},
    "TaskRequest": _TASK_REQUEST,
    "Enqueued": {"type": "object", "properties": {
        "id": {"type": "string"}, "queue": {"type": "string"}, "type": {"type": "string"},
        "state": {"enum": ["pending", "scheduled", "aggregating"]}, "process_at": {"type": "integer"},
        "max_retry": {"type": "integer"}, "timeout": {"type": "integer"}, "deadline": {"type": "integer"},
        "retention": {"type": "integer"}, "unique_key": {"type": ["string", "null"]}}},
    "BatchRequest": {"type": "object", "required": ["tasks"], "properties": {
        "tasks": {"type": "array", "maxItems": 1000, "items": _ref("TaskRequest")}}},
    "BatchResponse": {"type": "object", "properties": {
        "enqueued": {"type": "integer"}, "failed": {"type": "integer"},
        "results": {"type": "array", "items": {"oneOf": [_ref("Enqueued"), {
            "type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}]}}}},
    "Task": {"type": "object", "properties": {
        "id": {"type": "string"}, "queue": {"type": "string"}, "type": {"type": "string"},
        "state": {"enum": ["pending", "active", "scheduled", "retry", "archived", "completed",
                           "aggregating", "deleted"]},
        "payload": {"description": "JSON value, or text / base64 as payload_encoding says"},
        "payload_encoding": {"enum": ["text", "base64"]},
        "result": {"description": "JSON value, or text / base64 as result_encoding says"},
        "result_encoding": {"enum": ["text", "base64"]},
        "retried": {"type": "integer"}, "max_retry": {"type": "integer"},
        "last_error": {"type": ["string", "null"]}, "last_failed_at": {"type": ["integer", "null"]},
        "completed_at": {"type": ["integer", "null"]}, "next_process_at": {"type": ["integer", "null"]},
        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "the task's asynq headers ({} when it has none)"},
        "progress": {"type": ["object", "null"],
                     "description": "the handler's last progress report, null when it made none",
                     "properties": {"progress": {"type": "number", "minimum": 0, "maximum": 1},
                                    "message": {"type": "string"},
                                    "updated_at": {"type": "number", "description": "Unix seconds"}}}}},
    "QueueStats": {"type": "object", "properties": {
        name: {"type": kind} for name, kind in (
            ("queue", "string"), ("parent", "string"), ("weight", ["integer", "null"]), ("paused", "boolean"),
            ("size", "integer"), ("pending", "integer"), ("active", "integer"), ("scheduled", "integer"),
            ("retry", "integer"), ("archived", "integer"), ("completed", "integer"),
            ("processed_total", "integer"), ("failed_total", "integer"), ("processed_today", "integer"),
            ("failed_today", "integer"))}},
}


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The document; ``server_url`` becomes its ``servers`` entry."""
    secured = [{"bearer": []}, {"apiKey": []}]
    register_op = {
        "summary": "Register a worker for a parent queue", "security": secured,
        "description": "Role worker or admin. Returns Redis, sub-queues with weights, the deployment and secrets.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RegisterRequest")}}},
        "responses": {"200": _json(_ref("RegisterResponse"), "Registration"), **_ERRORS, **_BODY_ERRORS,
                      "404": _json(_ref("Error"), "Unknown queue")}}
    queue_param = {"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "rundown-server", "version": __version__,
                 "description": "Reference control server of rundown-agent: worker registration, "
                                "an HTTP enqueue API writing the asynq format, task status and queue stats."},
        "paths": {
            "/worker/register": {"post": {**register_op, "operationId": "register"}},
            "/workers/handshake": {"post": {**register_op, "operationId": "handshake",
                                            "summary": "Alias of /worker/register (runqy)"}},
            "/tasks": {"post": {
                "operationId": "enqueue", "summary": "Enqueue a task", "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TaskRequest")}}},
                "responses": {"201": _json(_ref("Enqueued"), "Enqueued"), **_ERRORS, **_BODY_ERRORS,
                              "404": _json(_ref("Error"), "Unknown queue"),
                              "409": _json(_ref("Error"), "Task ID exists or uniqueness lock held")}}},
            "/tasks/batch": {"post": {
                "operationId": "enqueueBatch", "summary": "Enqueue up to 1000 tasks", "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchRequest")}}},
                "responses": {"200": _json(_ref("BatchResponse"), "Per-task results, in order"),
                              **_ERRORS, **_BODY_ERRORS}}},
            "/tasks/{task_id}": {"get": {
                "operationId": "getTask", "summary": "A task's state and result", "security": secured,
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "queue", "in": "query", "schema": {"type": "string"},
                     "description": "Look only in this queue (default: every known queue)"},
                    {"name": "wait", "in": "query", "schema": {"type": "number", "maximum": 60},
                     "description": "Seconds to wait for the task to finish (completed or archived)"}],
                "responses": {"200": _json(_ref("Task"), "The task"), **_ERRORS,
                              "404": _json(_ref("Error"), "Not found")}}},
            "/workflows": {"post": {
                "operationId": "createWorkflow", "security": secured,
                "summary": "Create a workflow: a chain, a group with then, or a task with depends_on",
                "description": "Body: {\"chain\": [step, ...]}, {\"group\": [member, ...], \"then\": task} "
                               "(steps and members are tasks or nested chains and groups), or a task with "
                               "\"depends_on\": [task id, ...]; optional \"workflow_id\". A task: type, "
                               "payload, queue, max_retry, timeout, deadline, process_in, retention, headers, "
                               "pass_result. Each step after another gets \"previous\" (after one task) or "
                               "\"results\" (after a group) added to its object payload.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"201": _json({"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"type": "string"},
                    "tasks": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "queue": {"type": "string"}}}}}}, "Created"),
                    **_ERRORS, **_BODY_ERRORS, "404": _json(_ref("Error"), "Unknown queue or task"),
                    "409": _json(_ref("Error"), "A workflow with this ID exists")}}},
            "/workflows/{workflow_id}": {"get": {
                "operationId": "getWorkflow", "summary": "A workflow and each step's state", "security": secured,
                "parameters": [{"name": "workflow_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"enum": ["running", "failed", "succeeded"]},
                    "total": {"type": "integer"}, "done": {"type": "integer"}, "failed": {"type": "integer"},
                    "steps": {"type": "array", "items": {"type": "object"}}}}, "The workflow"),
                    **_ERRORS, "404": _json(_ref("Error"), "Not found")}}},
            "/queues": {"get": {
                "operationId": "listQueues", "summary": "Stats of every queue", "security": secured,
                "responses": {"200": _json({"type": "object", "properties": {
                    "queues": {"type": "array", "items": _ref("QueueStats")}}}, "Stats"), **_ERRORS}}},
            "/queues/{queue}": {"get": {
                "operationId": "getQueue", "summary": "Stats of one queue", "security": secured,
                "parameters": [queue_param],
                "responses": {"200": _json(_ref("QueueStats"), "Stats"), **_ERRORS,
                              "404": _json(_ref("Error"), "Unknown queue")}}},
            "/queues/{queue}/pause": {"post": {
                "operationId": "pauseQueue", "summary": "Pause a queue (admin)", "security": secured,
                "parameters": [queue_param],
                "responses": {"200": _json({"type": "object"}, "Paused"), **_ERRORS}}},
            "/queues/{queue}/unpause": {"post": {
                "operationId": "unpauseQueue", "summary": "Resume a queue (admin)", "security": secured,
                "parameters": [queue_param],
                "responses": {"200": _json({"type": "object"}, "Resumed"), **_ERRORS}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI document"}}}},
            "/healthz": {"get": {"operationId": "healthz", "summary": "Redis reachable?",
                                 "responses": {"200": {"description": "OK"},
                                               "503": {"description": "Redis unavailable"}}}},
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
