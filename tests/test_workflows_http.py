"""POST /workflows and GET /workflows/{id} on the reference control server (real Redis)."""

from __future__ import annotations

import json

import pytest

from agent.broker import keys
from agent.broker.messages import decode_task_message
from agent.server import create_app, parse_queues
from tests.test_server import A, C, TestClient, W, _complete_one, queues_doc, run


@pytest.fixture
def client(redis_url):
    with TestClient(create_app(parse_queues(queues_doc(), redis_url=redis_url))) as c:
        yield c


def test_post_a_chain_of_groups_and_follow_it(client, redis_url, r):
    body = {"chain": [{"type": "fetch", "queue": "emails", "payload": {"u": 1}},
                      {"group": [{"type": "a", "queue": "inference.high"}, {"type": "b", "queue": "emails"}],
                       "then": {"type": "merge", "queue": "emails"}}],
            "workflow_id": "wf-http-1"}
    resp = client.post("/workflows", json=body, headers=C)
    assert resp.status_code == 201, resp.text
    data = resp.json()
    assert data["id"] == "wf-http-1" and [t["queue"] for t in data["tasks"]] == [
        "emails", "inference.high", "emails", "emails"]
    first = decode_task_message(r.hget(keys.task_key("emails", data["tasks"][0]["id"]), "msg"))
    assert first.retry == 25 and first.retention == 86400  # the queue's task defaults
    view = client.get("/workflows/wf-http-1", headers=C).json()
    assert [s["state"] for s in view["steps"]] == ["enqueued", "waiting", "waiting", "waiting"]
    # the first step completes (as any consumer would): the group is enqueued with its result
    run(_complete_one(redis_url, "emails", b'{"page": 3}'))
    from agent.workflows.engine import WorkflowEngine, run_sync

    run_sync(WorkflowEngine(r).completed("wf-http-1", "0", b'{"page": 3}'))
    view = client.get("/workflows/wf-http-1", headers=C).json()
    assert [s["state"] for s in view["steps"]] == ["succeeded", "enqueued", "enqueued", "waiting"]
    msg = decode_task_message(r.hget(keys.task_key("inference.high", data["tasks"][1]["id"]), "msg"))
    assert json.loads(msg.payload) == {"previous": {"page": 3}}
    assert client.post("/workflows", json=body, headers=C).status_code == 409


@pytest.mark.parametrize("body, status, text", [
    ({"chain": []}, 400, "workflow.chain: expected a non-empty list"),
    ({"chain": [{"type": "a", "queue": "nope"}]}, 404, "workflow.chain[0].queue: unknown queue"),
    ({"group": [{"type": "a", "queue": "emails", "bogus": 1}]}, 400, "workflow.group[0].bogus: unknown field"),
    ({"chain": [{"type": "a", "queue": "emails", "payload": [1]}, {"type": "b", "queue": "emails"}]},
     201, ""),
    ({"chain": [{"type": "a", "queue": "emails"}, {"type": "b", "queue": "emails", "payload": [1]}]},
     400, "a step that receives the previous result needs a JSON object payload"),
    ({"type": "c", "queue": "emails", "depends_on": ["missing-id"]}, 400, "task 'missing-id' is in no queue"),
    ({"chain": [{"type": "a", "queue": "emails"}], "workflow_id": "x{y}"}, 400, "without braces"),
])
def test_bad_workflows_are_refused_naming_the_part(client, body, status, text):
    resp = client.post("/workflows", json=body, headers=C)
    assert resp.status_code == status, resp.text
    assert text in resp.text


def test_depends_on_over_http_and_roles(client, redis_url, r):
    dep = client.post("/tasks", json={"type": "x", "queue": "emails", "retention": 60}, headers=C).json()
    resp = client.post("/workflows", json={"type": "after", "queue": "emails", "depends_on": [dep["id"]]},
                       headers=C)
    assert resp.status_code == 201, resp.text
    wid = resp.json()["id"]
    assert client.get(f"/workflows/{wid}", headers=C).json()["steps"][1]["state"] == "waiting"
    assert client.post("/workflows", json={"chain": [{"type": "a", "queue": "emails"}]}, headers=W).status_code == 403
    assert client.get(f"/workflows/{wid}", headers=A).status_code == 200
    assert client.get("/workflows/none-such", headers=C).status_code == 404
    assert client.get(f"/workflows/{wid}").status_code == 401
