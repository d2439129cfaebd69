"""Reference intake for the gateway benchmark: the same work as orch-gateway's
POST /webhook, written the way the Python MVP did it (FastAPI + uvicorn):
bearer check, pydantic validation of the payload, durable write of the job
file (temp file, fsync, rename, fsync of the directory), 202 with the id.

Run: QUEUE_DIR=/tmp/q uvicorn bench.fastapi_intake:app --port 8091 --log-level warning
"""
import json
import os
import secrets
import time
import uuid
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

QUEUE = os.environ.get("QUEUE_DIR", "/tmp/fastapi-queue")
TOKEN = os.environ.get("WEBHOOK_TOKEN", "bench-token")
os.makedirs(QUEUE, exist_ok=True)
app = FastAPI()


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    goal: str = Field(min_length=1, max_length=5000)
    tags: List[str] = []
    metadata: Dict[str, Any] = {}
    callback_url: Optional[str] = None


@app.post("/webhook", status_code=202)
def webhook(payload: Payload, authorization: str = Header(default="")):
    if not secrets.compare_digest(authorization, f"Bearer {TOKEN}"):
        raise HTTPException(401, "unauthorized")
    job_id = uuid.uuid4().hex
    doc = json.dumps({"job_id": job_id, "created_at": time.time(), **payload.model_dump()}).encode()
    final = os.path.join(QUEUE, f"{time.time_ns():019d}-{job_id}.json")
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, doc)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    dfd = os.open(QUEUE, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return {"job_id": job_id, "status": "queued"}
